"""The held-out probe: every `probe_every` steps, the policy answers a fixed set of prompts with fixed
sampling keys, measured against the reward, the gold reward (when given) and the reference policy.

Training batches are too noisy to see reward over-optimization while it happens (their prompts and
samples change every step); the probe asks the same questions each time, so its curves move only
when the policy does. It reads a reference even when `kl_coef` is 0 (loaded for monitoring: one
forward per probe, none per step), so the KL is never blind. The first probe runs at step 0, on the
starting policy, so every later probe has the start to compare with. The best probe is kept as
OUTPUT/best (the starting policy included: when RL never beat it, it is the one to keep).

Because the prompts and sampling keys are fixed, a probe's per-prompt gold pairs with an earlier
probe's: the drop from the best probe is measured per prompt, and its standard error is that of the
paired differences, several times smaller than the unpaired one while the policy is still close.
Every probe's answers are appended to OUTPUT/probe_samples.jsonl, to read what the policy writes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhfkit import algos as A
from rlhfkit.data import load_prompts, prompt_fields, tokenize_prompts
from rlhfkit.rollout import GenerationSettings, make_experience
from rlhfkit.rollout.seeded import row_keys

PROBE_STEP = -1  # the step index of the probe's sampling keys: never one of the run's own steps


@dataclass
class Probe:
    rows: list  # tokenized prompt rows
    settings: GenerationSettings
    keys: torch.Tensor  # (P,) fixed sampling keys: the same samples for the same policy
    kl_penalty: float  # best-checkpoint criterion without gold: score - kl_penalty * KL
    best: dict = field(default_factory=dict)  # {"step", "criterion", "value", "score", "gold": per prompt}
    samples: Path | None = None  # OUTPUT/probe_samples.jsonl (None: not written, e.g. off rank 0)

    def state_dict(self) -> dict:  # checkpointed with the run, so a resumed run knows its best probe
        return {"best": json.dumps(self.best)}

    def load_state_dict(self, state: dict) -> None:
        self.best = json.loads(state["best"])

    def forget_after(self, step: int) -> None:
        """On resume or rollback to `step`: drop the samples of later probes (they will be drawn again)."""
        if self.samples is None or not self.samples.is_file():
            return
        kept = [line for line in self.samples.read_text().splitlines(keepends=True)
                if json.loads(line)["step"] <= step]
        tmp = self.samples.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, self.samples)


def build_probe(cfg, tokenizer, train_rows: list, samples: Path | None = None) -> Probe | None:
    """The probe of a run, or None when `probe_every` is 0. Its prompts: `probe_data` (held out), else a
    fixed sample of the training prompts (seeded; then the probe is not held out). samples: where its
    answers are appended (OUTPUT/probe_samples.jsonl on rank 0)."""
    if not cfg.probe_every:
        return None
    if cfg.probe_data:
        rows, _ = tokenize_prompts(load_prompts(cfg.probe_data, prompt_field=cfg.prompt_field), tokenizer,
                                   cfg.max_prompt_length, overlong="truncate")
    else:
        rows = train_rows
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed + 424242))
    rows = [rows[i] for i in order[:cfg.probe_size].tolist()]
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                  top_k=cfg.top_k, n=1, stop_strings=tuple(cfg.stop_strings))
    keys = row_keys(cfg.seed, PROBE_STEP, torch.arange(len(rows)))
    return Probe(rows=rows, settings=settings, keys=keys, kl_penalty=cfg.probe_kl_penalty, samples=samples)


def paired_drop(before: torch.Tensor, now: torch.Tensor) -> tuple[float, float]:
    """Mean drop (before - now) of paired per-prompt values (P,) and its standard error
    std(before - now) / sqrt(P): the same prompts and keys at two probes."""
    diff = before.double() - now.double()  # (P,)
    se = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return float(diff.mean()), se


def run_probe(probe: Probe, models, step: int = 0, engine=None) -> tuple[dict, torch.Tensor | None]:
    """Sample the probe's prompts (keyed: no draw from the training RNG) and measure: probe/score_mean,
    probe/gold_mean and its standard error, probe/gold_drop and probe/gold_drop_se (paired, from the best
    probe so far), probe/kl_mean (k1 per response, to the reference), probe/ppl_ref, probe/length_mean,
    probe/repeat_3gram_fraction, probe/distinct_2, and probe/ensemble_std with a reward-model ensemble.
    Returns (metrics, per-prompt gold (P,) or None without a gold function)."""
    reference = models.reference if models.reference is not None else models.monitor_reference
    context = models.ref_context or models.monitor_context
    exp = make_experience(models.policy, models.tokenizer, [r["prompt_text"] for r in probe.rows], probe.settings,
                          reference=reference, scorer=models.scorer, fields=prompt_fields(probe.rows),
                          ref_context=context if reference is None else None,
                          prompt_ids=[r["prompt_ids"] for r in probe.rows], row_keys=probe.keys, engine=engine)
    mask = exp.response_mask
    out = {"probe/score_mean": float(exp.scores.mean()),
           "probe/length_mean": float(mask.sum(-1).mean()),
           "probe/repeat_3gram_fraction": A.repeated_ngram_fraction(exp.response_ids, mask, 3),
           "probe/distinct_2": A.distinct_n(exp.response_ids, mask, 2)}
    if exp.ref_logprobs is not None:
        out["probe/kl_mean"] = float(((exp.logprobs - exp.ref_logprobs) * mask).sum(-1).mean())
        out["probe/ppl_ref"] = A.perplexity(exp.ref_logprobs, mask)
    if models.ensemble is not None and models.ensemble.last_std is not None:
        out["probe/ensemble_std"] = float(models.ensemble.last_std.mean())
    gold = None
    if models.gold is not None:
        gold = models.gold(exp).float()
        out["probe/gold_mean"] = float(gold.mean())
        out["probe/gold_std"] = float(gold.std()) if len(gold) > 1 else 0.0
        out["probe/gold_se"] = out["probe/gold_std"] / math.sqrt(len(gold))
        if probe.best.get("gold") is not None and len(probe.best["gold"]) == len(gold):
            out["probe/gold_drop"], out["probe/gold_drop_se"] = paired_drop(torch.tensor(probe.best["gold"]), gold)
    if probe.samples is not None:
        _append_samples(probe.samples, step, exp, gold)
    return out, gold


def _append_samples(path: Path, step: int, exp, gold) -> None:
    """One JSON line per probe prompt: step, prompt, response, score (and gold)."""
    with open(path, "a") as f:
        for i, (prompt, response) in enumerate(zip(exp.prompts, exp.responses)):
            row = {"step": step, "row": i, "prompt": prompt, "response": response, "score": float(exp.scores[i])}
            if gold is not None:
                row["gold"] = float(gold[i])
            f.write(json.dumps(row) + "\n")


def criterion(probe: Probe, metrics: dict) -> tuple[str, float]:
    """What "best" means: the probe's gold when there is one, else score - kl_penalty x KL (a reward
    model's score is only trusted as far as the policy stays near the reference it was trained on)."""
    if "probe/gold_mean" in metrics:
        return "probe/gold_mean", metrics["probe/gold_mean"]
    return (f"probe/score_mean - {probe.kl_penalty} x probe/kl_mean",
            metrics["probe/score_mean"] - probe.kl_penalty * metrics.get("probe/kl_mean", 0.0))


def keep_if_best(probe: Probe, metrics: dict, step: int, save, out_dir: Path | None,
                 gold: torch.Tensor | None = None) -> bool:
    """Save the policy as OUTPUT/best (via `save(folder)`) when this probe beats every earlier one;
    OUTPUT/best.json says which step and why. out_dir None (ranks other than 0): only the record of the
    best is kept, nothing is written. gold: the probe's per-prompt gold (P,), which later probes are
    paired with. Returns whether this probe is the best."""
    name, value = criterion(probe, metrics)
    if probe.best and value <= probe.best["value"]:
        return False
    probe.best = {"step": step, "criterion": name, "value": value, "score": metrics["probe/score_mean"]}
    if gold is not None:
        probe.best["gold"] = gold.tolist()  # the per-prompt gold later probes are paired with
    if out_dir is None:
        return True
    save(out_dir / "best")
    tmp = out_dir / "best.json.tmp"
    tmp.write_text(json.dumps({k: v for k, v in probe.best.items() if k != "gold"}, indent=2))
    os.replace(tmp, out_dir / "best.json")
    return True
