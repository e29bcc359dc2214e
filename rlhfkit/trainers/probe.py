"""The held-out probe: every `probe_every` steps, the policy answers a fixed set of prompts with fixed
sampling keys, measured against the reward, the gold reward (when given) and the reference policy.

Training batches are too noisy to see reward over-optimization while it happens (their prompts and
samples change every step); the probe asks the same questions each time, so its curves move only
when the policy does. It reads a reference even when `kl_coef` is 0 (loaded for monitoring: one
forward per probe, none per step), so the KL is never blind. The best probe is kept as OUTPUT/best.
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
    best: dict = field(default_factory=dict)  # {"step", "criterion", "value"}

    def state_dict(self) -> dict:  # checkpointed with the run, so a resumed run knows its best probe
        return {"best": json.dumps(self.best)}

    def load_state_dict(self, state: dict) -> None:
        self.best = json.loads(state["best"])


def build_probe(cfg, tokenizer, train_rows: list) -> Probe | None:
    """The probe of a run, or None when `probe_every` is 0. Its prompts: `probe_data` (held out), else a
    fixed sample of the training prompts (seeded; then the probe is not held out)."""
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
    return Probe(rows=rows, settings=settings, keys=keys, kl_penalty=cfg.probe_kl_penalty)


def run_probe(probe: Probe, models) -> dict:
    """Sample the probe's prompts (keyed: no draw from the training RNG) and measure: probe/score_mean,
    probe/gold_mean and its standard error, probe/kl_mean (k1 per response, to the reference),
    probe/ppl_ref, probe/length_mean, probe/repeat_3gram_fraction, probe/distinct_2."""
    reference = models.reference if models.reference is not None else models.monitor_reference
    context = models.ref_context or models.monitor_context
    exp = make_experience(models.policy, models.tokenizer, [r["prompt_text"] for r in probe.rows], probe.settings,
                          reference=reference, scorer=models.scorer, fields=prompt_fields(probe.rows),
                          ref_context=context if reference is None else None,
                          prompt_ids=[r["prompt_ids"] for r in probe.rows], row_keys=probe.keys)
    mask = exp.response_mask
    out = {"probe/score_mean": float(exp.scores.mean()),
           "probe/length_mean": float(mask.sum(-1).mean()),
           "probe/repeat_3gram_fraction": A.repeated_ngram_fraction(exp.response_ids, mask, 3),
           "probe/distinct_2": A.distinct_n(exp.response_ids, mask, 2)}
    if exp.ref_logprobs is not None:
        out["probe/kl_mean"] = float(((exp.logprobs - exp.ref_logprobs) * mask).sum(-1).mean())
        out["probe/ppl_ref"] = A.perplexity(exp.ref_logprobs, mask)
    if models.gold is not None:
        gold = models.gold(exp).float()
        out["probe/gold_mean"] = float(gold.mean())
        out["probe/gold_se"] = float(gold.std() / math.sqrt(len(gold))) if len(gold) > 1 else 0.0
    return out


def criterion(probe: Probe, metrics: dict) -> tuple[str, float]:
    """What "best" means: the probe's gold when there is one, else score - kl_penalty x KL (a reward
    model's score is only trusted as far as the policy stays near the reference it was trained on)."""
    if "probe/gold_mean" in metrics:
        return "probe/gold_mean", metrics["probe/gold_mean"]
    return (f"probe/score_mean - {probe.kl_penalty} x probe/kl_mean",
            metrics["probe/score_mean"] - probe.kl_penalty * metrics.get("probe/kl_mean", 0.0))


def keep_if_best(probe: Probe, metrics: dict, step: int, save, out_dir: Path) -> bool:
    """Save the policy as OUTPUT/best (via `save(folder)`) when this probe beats every earlier one;
    OUTPUT/best.json says which step and why. Returns whether it did."""
    name, value = criterion(probe, metrics)
    if probe.best and value <= probe.best["value"]:
        return False
    save(out_dir / "best")
    probe.best = {"step": step, "criterion": name, "value": value}
    tmp = out_dir / "best.json.tmp"
    tmp.write_text(json.dumps(probe.best, indent=2))
    os.replace(tmp, out_dir / "best.json")
    return True
