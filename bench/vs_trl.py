"""rlhfkit and TRL side by side on the same work, interleaved in one process.

GRPO: rlhfkit `--algo grpo` against `trl.GRPOTrainer`. PPO: rlhfkit `--algo ppo` against TRL's last
PPO trainer (`trl.experimental.ppo.PPOTrainer`, TRL 1.10-1.12) with a reward model and a separate
value model. Both sides read the same local model folders (bench/common.py), the same prompts and
the same Python reward function, with: 32 rows per step (GRPO 8 prompts x 4 samples, PPO the 8
prompts x 4 copies, one sample each), 32 new tokens, temperature 1, beta 0.04 at TRL's KL placement
(GRPO: k3 in the loss; PPO: k1 in the reward), one optimizer step per batch, fp32, no gradient
checkpointing, learning rate 1e-6, CPU.

Interleaving: each side runs in its own worker process (so its peak RSS is its own, and TRL's
`gc.collect()` walks only TRL's objects), and the two hand a baton to each other after every
step: ours 1, TRL 1, ours 2, TRL 2, ... Only the baton holder works (loading its models too), so
each step runs alone and load changes on a shared machine hit both sides alike. A side's step is
the time from receiving the baton to the end of its next step (TRL: `on_step_end`; ours: the
progress-bar update), so it includes everything each loop does per step, logging too. The first
step of each side (which includes loading) is discarded.

Workloads (`--workload`, bench/workload.py): `uniform` (the default, the settings above) and
`realistic`: 16-128-token prompts, responses of long-tailed length ending in EOS (at most 128 new
tokens) from an SFT'd policy, GRPO 8 prompts x 8 samples, PPO 32 prompts x 1. Both sides read the
same prompt file; TRL gets its best options for the workload on CPU without vLLM: TRL 1.12's
GRPOConfig has no padding-free or length-grouping option (only its SFT / DPO trainers do), Liger
and vLLM need a GPU, and its continuous-batching generation (`--trl-continuous-batching`) was 3.5x
slower than its padded `generate` on CPU, so it is off by default; its PPO trainer has no such
options. Each side also reports its response lengths (mean, p90, max) and its waste, counted by
the same hooks on both sides' models (bench/waste.py; `--no-trl-waste` to skip TRL's). Our side's
options pass through to RLConfig when given: `--engine`, `--micro-batch-tokens`,
`--padding-free/--no-padding-free`, labelled by `--ours-tag`.

    pip install "rlhfkit[bench]"    # trl>=1.10,<1.13 and psutil, or in a separate venv
    python bench/vs_trl.py --algo grpo --size tiny [--steps 10] [--json out.json]
    python bench/vs_trl.py --algo ppo --size small --steps 6
    python bench/vs_trl.py --workload realistic --algo grpo --size tiny --padding-free --ours-tag packed
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import waste  # noqa: E402
import workload  # noqa: E402

OURS, TRL = "rlhfkit", "trl"


class Baton:
    """Two worker processes take turns, one step each; a side that has finished never blocks the other."""

    def __init__(self, ctx):
        self.go = {OURS: ctx.Semaphore(0), TRL: ctx.Semaphore(0)}
        self.done = {OURS: ctx.Event(), TRL: ctx.Event()}

    @staticmethod
    def other(side: str) -> str:
        return TRL if side == OURS else OURS

    def wait(self, side: str) -> None:
        self.go[side].acquire()

    def pass_on(self, side: str) -> None:
        other = self.other(side)
        self.go[other].release()
        if not self.done[other].is_set():
            self.go[side].acquire()

    def finish(self, side: str) -> None:
        self.done[side].set()
        self.go[self.other(side)].release()


class Clock:
    """Step durations and completion tokens of one side."""

    def __init__(self):
        self.resumed = None  # when this side last received the baton
        self.steps: list[float] = []
        self.tokens: list[int] = []
        self.generation: list[float] = []  # seconds of each step spent in the loop's generation call
        self.gc: list[float] = []  # seconds of each step spent in explicit gc.collect() calls
        self.lengths: list[list[int]] = []  # completion lengths (EOS included) of each step's rows
        self.waste: list[dict] = []  # each step's WasteCounter snapshot (bench/waste.py)
        self.counter = None  # a WasteCounter, when this side is counted
        self._lengths: list[int] = []
        self._tokens = 0
        self._generation = 0.0
        self._gc = 0.0

    def collecting(self, collect):
        """gc.collect timed (TRL's PPO calls it twice per step)."""
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return collect(*args, **kwargs)
            finally:
                self._gc += time.perf_counter() - start
        return wrapper

    def generating(self, fn, lengths):
        """fn timed as generation; lengths(result, *args) -> completion lengths of its rows (EOS included)."""
        def wrapper(*args, **kwargs):
            start = common.now()
            result = fn(*args, **kwargs)
            self._generation += common.now() - start
            rows = [int(x) for x in lengths(result, *args)]
            self._lengths += rows
            self._tokens += sum(rows)
            return result
        return wrapper

    def end_step(self) -> None:
        self.steps.append(common.now() - self.resumed)
        self.tokens.append(self._tokens)
        self.generation.append(self._generation)
        self.gc.append(self._gc)
        self.lengths.append(self._lengths)
        self._tokens, self._generation, self._gc, self._lengths = 0, 0.0, 0.0, []
        if self.counter is not None:
            self.waste.append(self.counter.snapshot())
            self.counter.reset()

    def resume(self) -> None:
        self.resumed = common.now()


def _lengths_through_eos(response_ids: torch.Tensor, eos_id: int) -> list[int]:
    """Completion lengths of (N, R) sampled ids: through the first EOS, else the whole row."""
    is_eos = response_ids == eos_id
    return torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, response_ids.shape[1]).tolist()


# ---------------------------------------------------------------- our side

def _counter(paths: dict) -> waste.WasteCounter:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths["policy"])
    return waste.WasteCounter(tokenizer.pad_token_id, tokenizer.eos_token_id)


def run_ours(algo: str, paths: dict, steps: int, out: str, clock: Clock, baton: Baton | None, shape: dict,
             overrides: dict) -> None:
    """train_rl unchanged; the progress bar's update ends a step (and passes the baton). The waste counter
    hooks the models `build_models` returns and marks the engine's generate (bench/waste.py)."""
    import rlhfkit.reporting
    from rlhfkit.trainers.rl import train_rl

    progress = rlhfkit.reporting.progress
    def handoff_progress(*args, **kwargs):
        bar = progress(*args, **kwargs)
        update = bar.update

        def update_and_hand_off(n=1, **numbers):
            update(n, **numbers)
            if n:
                clock.end_step()
                if baton is not None:
                    baton.pass_on(OURS)
                clock.resume()
        bar.update = update_and_hand_off
        return bar

    clock.counter = _counter(paths)
    waste.instrument_train_rl(clock.counter, lambda generate: clock.generating(
        generate, lambda result, *args: result.response_mask.sum(1).tolist()))
    rlhfkit.reporting.progress = handoff_progress
    import rlhfkit.trainers.rl as rl

    rl.progress = handoff_progress  # the loop imported it by name
    os.environ.setdefault("RLHFKIT_QUIET", "1")
    clock.resume()  # step 1 includes loading the models: discarded
    train_rl(common.rl_config(algo, paths, out, steps, shape, overrides))


# ---------------------------------------------------------------- TRL's side

def _trl_callback(clock: Clock, baton: Baton | None):
    from transformers import TrainerCallback

    class HandOff(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.end_step()
            if baton is not None:
                baton.pass_on(TRL)
            clock.resume()
            return control

    return HandOff()


def _trl_common_args(out: str) -> dict:
    return dict(output_dir=out, learning_rate=common.LR, gradient_accumulation_steps=1, bf16=False, fp16=False,
                gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no",
                disable_tqdm=True, seed=0, max_grad_norm=1.0, dataloader_num_workers=0)


def _prompt_texts(paths: dict, algo: str) -> list[str]:
    """The prompt file our side reads, in file order (the uniform PPO file repeats each prompt 4 times)."""
    with open(paths["prompts_grpo" if algo == "grpo" else "prompts_ppo"]) as f:
        return [json.loads(line)["prompt"] for line in f if line.strip()]


def build_trl(algo: str, paths: dict, steps: int, out: str, clock: Clock, baton: Baton | None, shape: dict,
              trl_options: dict):
    """A TRL trainer with the matched settings, counting completion lengths into `clock` and, when
    clock.counter is set, the waste of its models (the same hooks as ours)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback

    tokenizer = AutoTokenizer.from_pretrained(paths["policy"])
    tokenizer.padding_side = "left"
    callback = _trl_callback(clock, baton)
    rows = shape["prompts_per_step"] * shape["n"]
    texts = _prompt_texts(paths, algo)
    counted = clock.counter.wrap_generate if clock.counter is not None else (lambda fn: fn)
    if algo == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        config = GRPOConfig(per_device_train_batch_size=rows, num_generations=shape["n"],
                            max_completion_length=shape["max_new_tokens"], temperature=common.TEMPERATURE,
                            top_p=1.0, top_k=0, beta=common.BETA, num_iterations=1, epsilon=0.2,
                            scale_rewards="group", loss_type="dapo", max_steps=steps, log_completions=False,
                            model_init_kwargs={"dtype": torch.float32}, **trl_options, **_trl_common_args(out))
        dataset = Dataset.from_list([{"prompt": p} for p in texts])
        trainer = GRPOTrainer(model=paths["policy"], reward_funcs=[common.reward], args=config, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[callback])
        trainer._generate_single_turn = clock.generating(counted(trainer._generate_single_turn),
                                                         lambda result, *args: [len(c) for c in result[0]])
        models = ((trainer.model, "policy"), (trainer.ref_model, "reference"))
    else:
        import trl.experimental.ppo.ppo_trainer as ppo_module
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        config = PPOConfig(per_device_train_batch_size=rows, num_mini_batches=1, num_ppo_epochs=1,
                           response_length=shape["max_new_tokens"], temperature=common.TEMPERATURE, stop_token="eos",
                           kl_coef=common.BETA, kl_estimator="k1", total_episodes=rows * steps,
                           num_sample_generations=0, local_rollout_forward_batch_size=rows,
                           sft_model_path=paths["policy"], reward_model_path=paths["reward"], **trl_options,
                           **_trl_common_args(out))
        ids = tokenizer(texts)["input_ids"]
        dataset = Dataset.from_dict({"input_ids": ids})

        def lm(path):
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

        def scalar(path):
            return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)

        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=lm(paths["policy"]),
                             ref_model=lm(paths["policy"]), reward_model=scalar(paths["reward"]),
                             value_model=scalar(paths["value"]), train_dataset=dataset,
                             eval_dataset=dataset.select(range(rows)), callbacks=[callback])
        ppo_module.batch_generation = clock.generating(
            counted(ppo_module.batch_generation),
            lambda result, model, queries, *args: _lengths_through_eos(result[0][:, queries.shape[1]:],
                                                                        tokenizer.eos_token_id))
        models = ((trainer.policy_model, "policy"), (trainer.ref_model, "reference"),
                  (trainer.reward_model, "reward_model"), (trainer.value_model, "critic"))
    if clock.counter is not None:
        for model, name in models:
            if model is not None:
                clock.counter.attach(model, name)
    trainer.remove_callback(PrinterCallback)  # disable_tqdm swaps the bar for a printer of every log
    return trainer


# ---------------------------------------------------------------- driver

def summary(clock: Clock) -> dict:
    kept = range(1, len(clock.steps))  # the first step is discarded
    step = common.median(clock.steps[i] for i in kept)
    tokens = common.median(clock.tokens[i] for i in kept)
    generation = common.median(clock.generation[i] for i in kept)
    gc_time = common.median(clock.gc[i] for i in kept)
    rest = common.median(clock.steps[i] - clock.generation[i] - clock.gc[i] for i in kept)
    out = {"step_s": step, "tokens_per_step": tokens, "tokens_per_s": tokens / step, "generation_s": generation,
           "gc_s": gc_time, "rest_s": rest, "steps": clock.steps, "tokens": clock.tokens,
           "generation": clock.generation, "gc": clock.gc,
           "lengths": workload.length_stats(x for i in kept for x in clock.lengths[i])}
    if clock.waste:
        out["waste"] = waste.summarize(clock.waste[i] for i in kept if i < len(clock.waste))
    return out


def worker(side: str, algo: str, steps: int, paths: dict, threads: int, baton: Baton, results, options: dict) -> None:
    """One side in its own process: wait for the baton, run `steps` steps taking turns, report.
    options: {shape, overrides (ours), trl (TRL's extra config), count_trl (hook TRL's models too)}."""
    import gc

    common.set_threads(threads)
    clock = Clock()
    gc.collect = clock.collecting(gc.collect)
    try:
        baton.wait(side)
        with tempfile.TemporaryDirectory() as out:
            clock.resume()  # step 1 includes loading the models and set-up: discarded
            if side == OURS:
                run_ours(algo, paths, steps, out, clock, baton, options["shape"], options["overrides"])
            else:
                if options["count_trl"]:
                    clock.counter = _counter(paths)
                build_trl(algo, paths, steps, out, clock, baton, options["shape"], options["trl"]).train()
        results.put((side, {**summary(clock), "peak_rss_mb": common.peak_rss_mb()}))
    except BaseException:
        results.put((side, {"error": traceback.format_exc()}))
    finally:
        baton.finish(side)


def run_interleaved(algo: str, steps: int, paths: dict, threads: int, options: dict) -> dict:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    baton, results = Baton(ctx), ctx.Queue()
    workers = [ctx.Process(target=worker, args=(side, algo, steps, paths, threads, baton, results, options), name=side)
               for side in (OURS, TRL)]
    for w in workers:
        w.start()
    baton.go[OURS].release()  # ours takes the first step
    out = dict(results.get() for _ in workers)
    for w in workers:
        w.join()
    for side, r in out.items():
        if "error" in r:
            raise SystemExit(f"the {side} worker failed:\n{r['error']}")
    return out


def trl_options(args) -> dict:
    """TRL config fields beyond the matched settings: its best generation option on this machine."""
    if args.trl_continuous_batching:
        if args.algo != "grpo":
            raise SystemExit("--trl-continuous-batching is a GRPOConfig option; TRL's PPO trainer has none")
        return {"use_transformers_continuous_batching": True}
    return {}


def print_result(result: dict, header: str) -> None:
    print(header)
    print(f"\n{'side':10s} {'step ms':>10s} {'generation':>11s} {'gc.collect':>11s} {'rest':>10s} {'tokens/step':>12s} "
          f"{'tokens/s':>10s} {'peak RSS MiB':>13s}")
    for side in (OURS, TRL):
        r = result[side]
        print(f"{side:10s} {r['step_s'] * 1e3:10.1f} {r['generation_s'] * 1e3:11.1f} {r['gc_s'] * 1e3:11.1f} "
              f"{r['rest_s'] * 1e3:10.1f} {r['tokens_per_step']:12.0f} {r['tokens_per_s']:10.1f} {r['peak_rss_mb']:13.0f}")
    print("(medians over the kept steps; generation: the loop's generate call; gc.collect: explicit calls; "
          "rest: the step less both)")
    for side in (OURS, TRL):
        r = result[side]
        print(f"{side}: sampled {workload.format_stats(r['lengths'])}")
        if "waste" in r:
            print(f"{side}: {waste.format_summary(r['waste'])}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=("grpo", "ppo"), default="grpo")
    parser.add_argument("--size", choices=tuple(common.SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=10, help="steps per side, the first discarded (default 10)")
    parser.add_argument("--models-dir", default=common.DEFAULT_MODELS_DIR)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of each worker (default 1, "
                        "see common.set_threads)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    workload.add_arguments(parser)
    parser.add_argument("--trl-continuous-batching", action="store_true", help="TRL GRPO: "
                        "use_transformers_continuous_batching=True (off by default: 3.5x slower than its padded "
                        "generate on CPU, see docs/performance.md)")
    parser.add_argument("--no-trl-waste", action="store_true", help="do not hook TRL's models to count its waste")
    args = parser.parse_args()
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (the first step is discarded)")
    try:
        import trl
    except ImportError:
        raise SystemExit("TRL is not installed: pip install 'rlhfkit[bench]' (trl>=1.10,<1.13), "
                         "or run this script with the Python of a venv that has it") from None
    common.set_threads(args.threads)
    overrides = workload.overrides(args)  # fails here, before any model is built, on a missing RLConfig field
    paths = workload.paths_for(args.workload, args.size, args.models_dir)
    shape = workload.shape(args.workload, args.algo)
    options = {"shape": shape, "overrides": overrides, "trl": trl_options(args), "count_trl": not args.no_trl_waste}
    machine = common.machine()
    result = run_interleaved(args.algo, args.steps, paths, args.threads, options)
    ours, theirs = result[OURS], result[TRL]
    built = paths.get("length_stats")
    print_result(result, f"# rlhfkit vs TRL {trl.__version__}: {args.algo}, {args.size} model, {args.workload} "
                 f"workload ({shape['prompts_per_step']} prompts x {shape['n']}, {shape['max_new_tokens']} new tokens), "
                 f"{args.steps} steps per side, interleaved (first discarded)\nmachine: {machine}\n"
                 f"ours: {args.ours_tag or 'defaults'} {overrides or ''}; TRL options: {options['trl'] or 'defaults'}"
                 + (f"\nat build: sampled {workload.format_stats(built)}" if built else ""))
    ratio = ours["step_s"] / theirs["step_s"]
    rss_ratio = ours["peak_rss_mb"] / theirs["peak_rss_mb"]
    print(f"\nratio rlhfkit / TRL: step time {ratio:.3f}, peak RSS {rss_ratio:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"algo": args.algo, "size": args.size, "workload": args.workload, "shape": shape,
                       "steps": args.steps, "trl": trl.__version__, "trl_options": options["trl"],
                       "ours_tag": args.ours_tag, "ours_options": overrides, "build_lengths": built,
                       "machine": machine, "threads": args.threads, "ratio": ratio, "rss_ratio": rss_ratio,
                       **result}, f, indent=1)


if __name__ == "__main__":
    main()
