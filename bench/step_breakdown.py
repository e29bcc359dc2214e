"""Where the time of one rlhfkit RL step goes, and how far the step is from its floor.

Runs `train_rl` unchanged, timed from outside: timing wrappers are patched around the functions
the loop calls (generation, the policy / reference logprob passes, critic values, the scorer,
rewards and advantages, the policy and value losses, each backward, the optimizer steps,
logging). Steps are cut at the progress bar's update; the first step is discarded and each part
is the median over the remaining steps; "rest" is the median of what no wrapper covered.

The floor is the work the algorithm cannot avoid, each piece timed alone in the same process
with plain PyTorch / HF calls: `model.generate` of the same shape, the reward, the reference
forward, (PPO: the reward-model and critic forwards), the policy forward + backward, (PPO: the
critic forward + backward), and the optimizer step(s). With one epoch over one minibatch the
update is on-policy, so the old logprobs are the update's own detached logprobs (as TRL's
GRPOTrainer does): a separate no-grad policy pass is not part of the floor.

Also reported: the waste of generation and of the update passes (bench/waste.py: positions fed to
the models that are padding or belong to finished rows) and the sampled response lengths.
`--workload realistic` runs bench/workload.py's workload; the floor then generates for the loop's
latest prompts, padded as HF pads (a padding-free step can go below it). Our side's options pass
through to RLConfig when given (`--engine`, `--micro-batch-tokens`, `--padding-free`, `--ours-tag`).

    python bench/step_breakdown.py --algo grpo --size tiny [--steps 10] [--json out.json]
    python bench/step_breakdown.py --algo ppo --size small
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import waste  # noqa: E402
import workload  # noqa: E402

# Top-level parts (they do not overlap); "hf_generate" is inside "generation" and shown indented.
PARTS = [
    ("generation", "generation (rollout.generate)"),
    ("hf_generate", "  of which HF model.generate"),
    ("policy_rollout", "policy logprobs, no grad (rollout)"),
    ("reference", "reference forward (rollout)"),
    ("critic_rollout", "critic forward, no grad (rollout)"),
    ("reward", "reward (function or reward model)"),
    ("advantages", "rewards, KL, advantages"),
    ("policy_fwd", "policy forward + loss (update)"),
    ("policy_bwd", "policy backward"),
    ("critic_fwd", "critic forward + loss (update)"),
    ("critic_bwd", "critic backward"),
    ("optimizer", "optimizer steps (norm, clip, AdamW)"),
    ("logging", "metrics logging"),
]
NESTED = {"hf_generate"}


class Probe:
    """Labelled durations per step, step boundaries, tokens per step."""

    def __init__(self):
        self.step = 0
        self.parts = defaultdict(lambda: defaultdict(float))  # step -> label -> seconds
        self.tokens = defaultdict(int)  # step -> completion tokens (response_mask sum)
        self.shapes = {}  # step -> (rows, prompt width, response width, valid tokens)
        self.starts, self.ends = [], []  # perf_counter at the start and end of each step
        self.between_steps = None  # called after each step but the last (the floor's repetitions)
        self.total_steps = 0
        self.peak_after_first = None  # peak RSS after step 1, before any floor repetition
        self.pending_backward = None
        self.models = None
        self.optimizers = None
        self.recording = True  # off while the floor runs between steps
        self.scorer = None  # the loop's own scorer, before the timing wrapper
        self.lengths = defaultdict(list)  # step -> response lengths (EOS included) of its rows
        self.last_prompts = None  # (prompt_ids, prompt_mask) of the latest generation, for the floor
        self.counter = None  # WasteCounter (bench/waste.py), set by main
        self.waste = []  # per step: the counter's snapshot

    def timed(self, fn, label):
        """fn wrapped: its duration is added to `label` (a string, or a function of the call's arguments)."""
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = common.now()
            try:
                return fn(*args, **kwargs)
            finally:
                name = label(*args, **kwargs) if callable(label) else label
                if name is not None and self.recording:
                    self.parts[self.step][name] += common.now() - start
        return wrapper


def instrument(probe: Probe) -> None:
    """Patch timing wrappers around what `train_rl` calls (the functions themselves are unchanged)."""
    import rlhfkit.models
    import rlhfkit.reporting
    import rlhfkit.rollout.collect as collect
    import rlhfkit.trainers.rl_setup as setup
    import rlhfkit.trainers.rl_step as rl_step
    import rlhfkit.trainers.rl_update as rl_update

    build_models, build_optimizers = setup.build_models, setup.build_optimizers

    def capture_optimizers(*args, **kwargs):
        probe.optimizers = build_optimizers(*args, **kwargs)
        return probe.optimizers

    setup.build_optimizers = capture_optimizers

    def build_and_wrap(*args, **kwargs):
        models = build_models(*args, **kwargs)
        probe.models = models
        models.policy.generate = probe.timed(models.policy.generate, "hf_generate")
        if models.critic is not None:  # no-grad calls are the rollout's; grad calls are inside critic_fwd
            models.critic.values = probe.timed(models.critic.values,
                                               lambda *a, **k: None if torch.is_grad_enabled() else "critic_rollout")
        scorer = probe.scorer = models.scorer

        class TimedScorer:
            name = getattr(scorer, "name", type(scorer).__name__)
            reward_model = getattr(scorer, "reward_model", None)  # for the waste counter's hooks
            __call__ = staticmethod(probe.timed(scorer.__call__, "reward"))

        models.scorer = TimedScorer()
        return models

    setup.build_models = build_and_wrap

    def counting(generate):  # the engine's generate, whichever engine: timed, its batch measured
        def generate_and_count(*args, **kwargs):
            out = generate(*args, **kwargs)
            rows, p = out.prompt_ids.shape
            r = out.response_ids.shape[1]
            valid = int(out.prompt_mask.sum()) + int(out.response_mask.sum())
            probe.tokens[probe.step] += int(out.response_mask.sum())
            probe.lengths[probe.step] += out.response_mask.sum(1).tolist()
            probe.shapes[probe.step] = (rows, p, r, valid)
            probe.last_prompts = (out.prompt_ids, out.prompt_mask)
            return out
        return probe.timed(generate_and_count, "generation")

    waste.instrument_train_rl(probe.counter, on_generate=counting)
    collect.response_logprobs = probe.timed(
        collect.response_logprobs, lambda model, *a, **k: "policy_rollout" if model is probe.models.policy else "reference")
    rl_step.shape_rewards = probe.timed(rl_step.shape_rewards, "advantages")

    def loss_then(fn, label, backward_label):
        timed = probe.timed(fn, label)

        def wrapper(*args, **kwargs):
            out = timed(*args, **kwargs)
            probe.pending_backward = backward_label
            return out
        return wrapper

    rl_update.policy_loss_micro = loss_then(rl_update.policy_loss_micro, "policy_fwd", "policy_bwd")
    rl_update.value_loss_micro = loss_then(rl_update.value_loss_micro, "critic_fwd", "critic_bwd")
    backward = torch.Tensor.backward

    def timed_backward(self, *args, **kwargs):
        label, probe.pending_backward = probe.pending_backward or "other_backward", None
        return probe.timed(backward, label)(self, *args, **kwargs)

    torch.Tensor.backward = timed_backward
    rl_update.optimizer_step = probe.timed(rl_update.optimizer_step, "optimizer")
    rlhfkit.reporting.MetricsLogger.log = probe.timed(rlhfkit.reporting.MetricsLogger.log, "logging")
    progress = rlhfkit.reporting.progress

    def progress_with_boundaries(*args, **kwargs):
        bar = progress(*args, **kwargs)
        update = bar.update
        probe.starts.append(common.now())

        def update_and_cut(n=1, **numbers):
            update(n, **numbers)
            if n:  # the resume offset update(step) is n=0 on a fresh run
                probe.ends.append(common.now())
                probe.waste.append(probe.counter.snapshot())
                probe.counter.reset()
                probe.step += 1
                if probe.peak_after_first is None:
                    probe.peak_after_first = common.peak_rss_mb()
                if probe.between_steps is not None and probe.step < probe.total_steps:
                    probe.recording = False
                    probe.between_steps()
                    probe.counter.reset()  # the floor's forwards are not the loop's
                    probe.recording = True
                probe.starts.append(common.now())
        bar.update = update_and_cut
        return bar

    rlhfkit.reporting.progress = progress_with_boundaries
    import rlhfkit.trainers.rl as rl

    rl.progress = progress_with_boundaries  # the loop imported it by name


# ---------------------------------------------------------------- the floor

class Floor:
    """The unavoidable pieces of one step, each timed alone with plain calls, one repetition at a time.

    Repetitions run between the loop's steps (step, floor, step, floor, ...) so that both see the
    same load on a shared machine. The optimizer steps reuse the loop's own AdamW objects (no
    second copy of the optimizer state; the floor's updates move the weights a little, which
    changes no shape and no cost).
    """

    def __init__(self, algo: str, models, scorer, optimizers, n: int, max_new_tokens: int):
        from transformers import GenerationConfig

        self.algo, self.models, self.n = algo, models, n
        tok = models.tokenizer
        self.config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True,
                                       temperature=common.TEMPERATURE, top_p=1.0, top_k=0,
                                       eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id, use_cache=True)
        self.generate = getattr(models.policy.generate, "__wrapped__", models.policy.generate)
        self.rm = scorer.reward_model if algo == "ppo" else None
        self.optimizers = [o for o in (optimizers.policy, optimizers.critic) if o is not None]
        self.times = defaultdict(list)
        self.shapes = []

    def _clock(self, name, fn):
        start = common.now()
        out = fn()
        self.times[name].append(common.now() - start)
        return out

    def set_prompts(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        """The next repetition samples n responses to each of these (B, P) left-padded prompts: the loop's
        latest batch of prompts (its rows come in groups of n)."""
        keep = torch.arange(0, prompt_ids.shape[0], self.n)
        ids, mask = prompt_ids[keep], prompt_mask[keep]
        width = int(mask.sum(1).max())  # drop the columns that are padding in every row
        ids, mask = ids[:, ids.shape[1] - width:], mask[:, mask.shape[1] - width:]
        self.prompts = self.models.tokenizer.batch_decode(ids, skip_special_tokens=True)
        self.ids = ids.repeat_interleave(self.n, 0)  # (N, P)
        self.mask = mask.repeat_interleave(self.n, 0)  # (N, P)

    def rep(self) -> None:
        from rlhfkit.models import position_ids_from_mask

        m, clock, n = self.models, self._clock, self.n
        with torch.no_grad():
            out = clock("generate", lambda: self.generate(input_ids=self.ids, attention_mask=self.mask,
                                                          generation_config=self.config))
        P, R = self.ids.shape[1], out.shape[1] - self.ids.shape[1]
        full_mask = torch.cat([self.mask, torch.ones_like(out[:, P:])], 1)  # (N, P+R)
        pos = position_ids_from_mask(full_mask)
        labels = out[:, P:]  # (N, R)
        self.shapes.append((out.shape[0], P, R))

        def logprobs(model):  # (N, R): logits of the R response positions only
            logits = model(input_ids=out, attention_mask=full_mask, position_ids=pos, logits_to_keep=R + 1,
                           use_cache=False).logits[:, :-1]
            return torch.log_softmax(logits.float() / common.TEMPERATURE, -1).gather(-1, labels[..., None])[..., 0]

        def values(scalar, grad):  # (N, P+R), one per position
            with torch.set_grad_enabled(grad):
                hidden = scalar.backbone(input_ids=out, attention_mask=full_mask, position_ids=pos,
                                         use_cache=False).last_hidden_state
                return scalar.head(hidden).squeeze(-1).float()

        with torch.no_grad():
            if self.algo == "grpo":
                scores = clock("reward", lambda: torch.tensor(common.reward(
                    [p for p in self.prompts for _ in range(n)], m.tokenizer.batch_decode(labels, skip_special_tokens=True))))
            else:
                scores = clock("reward", lambda: values(self.rm, False)[:, -1])
            ref_lp = clock("reference", lambda: logprobs(m.reference))
            old_values = clock("critic_rollout", lambda: values(m.critic, False)[:, P - 1:-1]) if m.critic else None
        if self.algo == "grpo":
            adv = (scores - scores.view(-1, n).mean(-1).repeat_interleave(n))[:, None].expand(-1, R)  # (N, R)
        else:
            adv = scores[:, None] - old_values  # (N, R), a stand-in of GAE's shape (its cost is negligible)
        lp = clock("policy_fwd", lambda: logprobs(m.policy))

        def policy_loss():  # clipped surrogate, old logprobs = lp.detach() (on-policy)
            ratio = torch.exp(lp - lp.detach())
            surrogate = torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
            if self.algo == "grpo":  # k3 KL in the loss
                surrogate = surrogate - common.BETA * (torch.exp(ref_lp - lp) - (ref_lp - lp) - 1)
            return -surrogate.mean()

        clock("policy_bwd", lambda: policy_loss().backward())
        if m.critic is not None:
            v = clock("critic_fwd", lambda: values(m.critic, True)[:, P - 1:-1])
            clock("critic_bwd", lambda: (0.5 * (v - (old_values + adv)) ** 2).mean().backward())

        def step():
            for optimizer in self.optimizers:
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        clock("optimizer", step)

    def medians(self) -> dict:
        """Median seconds per piece, the first repetition (warm-up) discarded."""
        return {k: common.median(v[1:]) for k, v in self.times.items()}


# ---------------------------------------------------------------- report

def run(args, steps: int) -> tuple:
    """train_rl instrumented, with a floor repetition between its steps; returns (probe, floor, shape, overrides)."""
    from transformers import AutoTokenizer

    from rlhfkit.trainers.rl import train_rl

    overrides = workload.overrides(args)  # fails here, before any model is built, on a missing RLConfig field
    paths = workload.paths_for(args.workload, args.size, args.models_dir)
    shape = workload.shape(args.workload, args.algo)
    tokenizer = AutoTokenizer.from_pretrained(paths["policy"])
    probe = Probe()
    probe.total_steps = steps
    probe.counter = waste.WasteCounter(tokenizer.pad_token_id, tokenizer.eos_token_id)
    probe.build_lengths = paths.get("length_stats")
    instrument(probe)
    floor = None

    def floor_rep():
        nonlocal floor
        if floor is None:
            floor = Floor(args.algo, probe.models, probe.scorer, probe.optimizers, shape["n"], shape["max_new_tokens"])
        floor.set_prompts(*probe.last_prompts)
        floor.rep()

    probe.between_steps = floor_rep
    with tempfile.TemporaryDirectory() as out:
        train_rl(common.rl_config(args.algo, paths, out, steps, shape, overrides))
    return probe, floor, shape, overrides


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=("grpo", "ppo"), default="grpo")
    parser.add_argument("--size", choices=tuple(common.SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=None, help="RL steps, the first discarded; one floor "
                        "repetition runs after each step but the last, the first discarded (default 10)")
    parser.add_argument("--models-dir", default=common.DEFAULT_MODELS_DIR)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see "
                        "common.set_threads)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    workload.add_arguments(parser)
    args = parser.parse_args()
    steps = args.steps or 10
    if steps < 3:
        raise SystemExit("--steps must be >= 3 (the first step and the first floor repetition are discarded)")
    os.environ.setdefault("RLHFKIT_QUIET", "1")
    common.set_threads(args.threads)
    probe, floor, shape, overrides = run(args, steps)
    report(args, steps, probe, floor, shape, overrides)


def report(args, steps: int, probe: Probe, floor: Floor, shape: dict, overrides: dict) -> None:
    """Print the breakdown, the floor, the waste and the lengths; write the JSON file."""
    step_times = [b - a for a, b in zip(probe.starts, probe.ends)]
    kept = range(1, len(step_times))  # step 0 (the first) is discarded
    step = common.median(step_times[i] for i in kept)
    parts = {name: common.median(probe.parts[i].get(name, 0.0) for i in kept) for name, _ in PARTS}
    rest = common.median(step_times[i] - sum(v for k, v in probe.parts[i].items() if k not in NESTED) for i in kept)
    tokens = common.median(probe.tokens[i] for i in kept)
    rows, p, r, valid = probe.shapes[len(step_times) - 1]
    floor_parts = floor.medians()
    floor_total = sum(floor_parts.values())
    floor_width = common.median(s[2] for s in floor.shapes[1:])
    wasted = waste.summarize([probe.waste[i] for i in kept])
    lengths = workload.length_stats(x for i in kept for x in probe.lengths[i])

    print(f"# step breakdown: rlhfkit {args.algo}, {args.size} model, {args.workload} workload "
          f"({shape['prompts_per_step']} prompts x {shape['n']}), {steps} steps (first discarded)")
    print(f"machine: {common.machine()}")
    print(f"options: {args.ours_tag or 'defaults'} {overrides or ''}")
    if probe.build_lengths:
        print(f"at build: sampled {workload.format_stats(probe.build_lengths)}")
    print(f"last batch: {rows} rows, prompt width {p}, response width {r} (max {shape['max_new_tokens']} new tokens); "
          f"padding is {100 * (1 - valid / (rows * (p + r))):.1f}% of the (rows, P+R) positions")
    print(f"sampled (kept steps): {workload.format_stats(lengths)}")
    print(waste.format_summary(wasted))
    print(f"\n{'part':42s} {'median ms':>10s} {'share':>7s}")
    for name, label in PARTS:
        if parts[name] or name in ("generation", "optimizer"):
            print(f"{label:42s} {parts[name] * 1e3:10.1f} {100 * parts[name] / step:6.1f}%")
    print(f"{'rest (not covered by a part)':42s} {rest * 1e3:10.1f} {100 * rest / step:6.1f}%")
    print(f"{'step':42s} {step * 1e3:10.1f}")
    print(f"\nfloor: each piece alone, plain padded HF calls on the loop's latest prompts, {len(floor.shapes) - 1} "
          f"repetitions between the steps (median ms; generated width {floor_width:.0f}):")
    for name, value in floor_parts.items():
        print(f"  {name:40s} {value * 1e3:10.1f}")
    print(f"  {'floor total':40s} {floor_total * 1e3:10.1f}")
    print(f"\nstep median {step * 1e3:.1f} ms, completion tokens/s {tokens / step:.1f}, peak RSS {probe.peak_after_first:.0f} "
          f"MiB (after step 1; {common.peak_rss_mb():.0f} MiB with the floor), step / floor {step / floor_total:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"algo": args.algo, "size": args.size, "workload": args.workload, "steps": steps,
                       "ours_tag": args.ours_tag, "ours_options": overrides, "step_s": step, "step_times": step_times,
                       "parts_s": parts, "rest_s": rest, "tokens_per_step": tokens, "tokens_per_s": tokens / step,
                       "peak_rss_mb": probe.peak_after_first, "peak_rss_with_floor_mb": common.peak_rss_mb(),
                       "floor_s": floor_parts, "floor_total_s": floor_total, "floor_times": floor.times,
                       "ratio": step / floor_total, "waste": wasted, "waste_per_step": probe.waste,
                       "lengths": lengths, "build_lengths": probe.build_lengths,
                       "shape": {"rows": rows, "prompt": p, "response": r, "valid": valid, **shape},
                       "machine": common.machine(), "threads": args.threads}, f, indent=1)


if __name__ == "__main__":
    main()
