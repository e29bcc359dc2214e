"""`rlhfkit quickstart`: the whole of RLHF on a bundled task, on a laptop CPU, in minutes.

1. build a tiny model and tokenizer from a config (nothing is downloaded);
2. write the task's data as ordinary JSONL files (seeded);
3. SFT -> reward model (reviews) -> RL, each a normal run of the trainers `rlhfkit sft|rm|rl` use;
4. evaluate the SFT and RL policies on held-out prompts (score, gold, KL, perplexity, length);
5. write summary.json and a self-contained report.html, print a before/after table.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import ConfigError, option, save_config

# Per task: model size, data sizes and stage settings. "fast" shrinks everything for tests.
# Measured results in docs/quickstart.md (3 seeds per task). The comments say what each choice is for.
PRESETS = {
    "reviews": {
        "algo": "ppo", "model": dict(hidden_size=64, num_layers=2, num_heads=4),
        # 8000 preference pairs (and lm_coef below): with the task's default 2000, the reward model
        # agreed with gold on 66-68% of pairs and RL's gold gain over SFT was +0.37, -0.18, +0.06 on
        # seeds 0-2; with 8000 and lm_coef 0.5 it agreed on 79-81% (tuning sweep). Measured with these
        # settings (1 thread, before the policy comparisons below): gain +0.41, +0.22, +0.42. 256 held-out
        # prompts: se ~0.03.
        "sizes": dict(prefs_train=8000, prompts_eval=256),
        "fast_sizes": dict(sft_train=200, sft_eval=20, prefs_train=200, prefs_eval=40, prompts_train=40,
                           prompts_eval=16),
        "sft": dict(epochs=8, batch_size=32, lr=3e-3, max_length=64), "fast_sft": dict(epochs=1),
        # Comparisons of the SFT policy's own samples (two per prompt, labelled by the same simulated
        # annotators), added to the written pairs, as InstructGPT's labellers compared model samples and
        # Gao et al. (2023) trained their proxy reward models on the initial policy's samples. With the
        # written pairs alone the reward model was wrong where the policy starts: held-out gold fell in the
        # first 15-25 RL steps of every run, healthy or not (docs/health/reward-hacking.md).
        "policy_pairs": dict(prompts=4000), "fast_policy_pairs": dict(prompts=40),
        # lm_coef keeps the backbone a language model while it learns the ranking (MOSS-RLHF).
        "rm": dict(epochs=2, batch_size=32, lr=1e-3, max_length=64, lm_coef=0.5), "fast_rm": dict(epochs=1),
        # kl_coef 0.05 in the reward kept the KL to the SFT policy at 3.9-6.6 nats per response on seeds 0-9
        # (9.8-39.9 with kl_coef 0, where gold ends below SFT's on 8 of 10 seeds; docs/health/reward-hacking.md);
        # 28 tokens cut almost no response.
        # PPO's own defaults: 2 passes over each batch of 16 (docs/rl/ppo.md, "Defaults").
        # critic_warmup_steps: the critic (initialized from the reward model) learns alone for 5 steps before
        # the policy moves (PPO-max); without it the first updates' advantages were the value head's noise
        # and gold fell at step 5 on some seeds, healthy or not (docs/health/reward-hacking.md).
        # The probe: 128 of the held-out prompts every 2 steps (with sparser probes a fast fall is seen
        # only after gold is already below the start; with fewer prompts a fall hides in the noise).
        "rl": dict(steps=100, prompts_per_step=16, max_new_tokens=28, lr=3e-4, kl_coef=0.05, max_prompt_length=16,
                   critic_warmup_steps=5, probe_every=2, probe_size=128),
        "fast_rl": dict(steps=3, prompts_per_step=4, probe_every=1, probe_size=4),
        "eval": dict(max_new_tokens=28), "fast_eval": dict(),
        # --algo dpo|cdpo|ipo|simpo: instead of RL, the SFT policy learns from the reward model's own
        # pairs (docs/dpo.md). Not tuned: one pass, beta 0.1 (SimPO: its paper's 2.0); measured against PPO
        # on 3 seeds in docs/dpo-vs-ppo.md (DPO and IPO barely move at lr 1e-4; SimPO drifts far).
        "dpo": dict(epochs=1, batch_size=32, lr=1e-4, max_length=64, beta=0.1), "fast_dpo": dict(epochs=1),
    },
    "arithmetic": {
        "algo": "grpo", "model": dict(hidden_size=64, num_layers=2, num_heads=4),
        # 1000 demonstrations x 40 epochs at lr 1e-3, half of them a sloppy annotator's estimates
        # ("about 80" for 81): the SFT policy knows the format, copies the habit, and its exact
        # answers are imprecise when sampled at temperature 1 (~0.2 accuracy). 1000 held-out
        # prompts: standard error ~0.015.
        "task_options": dict(estimate_fraction=0.5),
        "sizes": dict(sft_train=1000, prompts_train=4000, prompts_eval=1000),
        "fast_sizes": dict(sft_train=200, sft_eval=20, prompts_train=40, prompts_eval=16),
        "sft": dict(epochs=40, batch_size=32, lr=1e-3, max_length=32), "fast_sft": dict(epochs=1),
        "rm": None, "fast_rm": None,
        # GRPO drops the estimates and sharpens the answers: accuracy 0.16-0.22 -> 0.32-0.57 on
        # seeds 0-2 (docs/quickstart.md). 512 samples a step and a 30-step warm-up: without it,
        # a first Adam step at lr 5e-4 wrecks this brittle policy (accuracy 0.27 -> 0.05).
        # 10 new tokens: room for "about 100".
        "rl": dict(steps=150, prompts_per_step=64, n=8, max_new_tokens=10, lr=5e-4, warmup_steps=30, kl_coef=0.01,
                   max_prompt_length=16),
        "fast_rl": dict(steps=3, prompts_per_step=2, n=4, warmup_steps=0),
        "eval": dict(max_new_tokens=10), "fast_eval": dict(),
    },
}


# --algo name -> the `loss` of `rlhfkit dpo` (an offline stage in place of RL; beta for SimPO per its paper)
DPO_ALGOS = {"dpo": dict(loss="sigmoid"), "cdpo": dict(loss="cdpo"), "ipo": dict(loss="ipo"),
             "simpo": dict(loss="simpo", beta=2.0)}


@dataclass
class QuickstartConfig:
    """`rlhfkit quickstart`: SFT -> reward model -> RL -> eval -> report on a bundled task."""

    task: str = option("reviews", "bundled task", choices=("reviews", "arithmetic"))
    algo: str | None = option(None, "RL algorithm (default: ppo for reviews, grpo for arithmetic), or instead of RL "
                                    "a direct preference loss on the reward model's pairs: dpo, cdpo, ipo, simpo "
                                    "(reviews only)")
    output: str = option("runs/quickstart", "output folder (one subfolder per stage, summary.json, report.html)")
    fast: bool = option(False, "a much smaller run (seconds), for tests and smoke checks")
    kl_coef: float | None = option(None, "override beta; 0 runs the reward-hacking experiment (no KL leash)")
    steps: int | None = option(None, "override the number of RL steps")
    rl_lr: float | None = option(None, "override the RL learning rate")
    seed: int = option(0, "seed for data, model initialisation and sampling")
    device: str = option("cpu", "cpu (the quickstart is sized for a laptop CPU), cuda or auto")
    threads: int = option(1, "CPU threads for torch (0: torch's default, one per core). The default 1 makes the "
                             "numbers independent of the core count and of whatever else is running (floating-point "
                             "sums depend on the thread count): the same on the same CPU type with the same library "
                             "versions, not across CPU types (docs/quickstart.md); 2 threads were ~20% faster on an "
                             "idle 2-core machine and many times slower on a busy one")

    def __post_init__(self):
        if self.task not in PRESETS:
            raise ConfigError(f"unknown task '{self.task}'; choose one of {', '.join(PRESETS)}")
        if self.algo in DPO_ALGOS and "dpo" not in PRESETS[self.task]:
            raise ConfigError(f"--algo {self.algo} trains on preference pairs; task '{self.task}' has none "
                              f"(use --task reviews)")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 1, or 0 for torch's default; got {self.threads}")


def _settings(cfg: QuickstartConfig, key: str) -> dict | None:
    preset = PRESETS[cfg.task]
    base = preset.get(key)
    if base is None:
        return None
    return {**base, **(preset[f"fast_{key}"] if cfg.fast else {})}


def run_quickstart(cfg: QuickstartConfig) -> dict:
    """Run every stage (see the module docstring); returns the summary written to OUTPUT/summary.json."""
    with _environment(cfg.threads) as environment:
        return _run(cfg, environment)


def _run(cfg: QuickstartConfig, environment: dict) -> dict:
    from rlhfkit.evaluate import evaluate_policy, format_table
    from rlhfkit.models.tiny import save_tiny
    from rlhfkit.reporting import build_report
    from rlhfkit.tasks import get_task
    from rlhfkit.trainers.rl import RLConfig, train_rl
    from rlhfkit.trainers.rm import RMConfig, train_rm
    from rlhfkit.trainers.sft import SFTConfig, train_sft

    t_start = time.perf_counter()
    out = Path(cfg.output)
    save_config(cfg, out, name="quickstart.yaml")
    preset = PRESETS[cfg.task]
    task = get_task(cfg.task, **preset.get("task_options", {}))
    algo = cfg.algo or preset["algo"]
    sizes = preset["fast_sizes"] if cfg.fast else preset["sizes"]
    print(f"[quickstart] task={cfg.task} algo={algo} output={out}")
    # 1-2. data and a tiny model built from the task's vocabulary
    data = task.write_data(out / "data", seed=cfg.seed, **sizes)
    base = save_tiny(out / "base_model", task.corpus(), level=task.tokenizer_level, seed=cfg.seed, **preset["model"])
    summary: dict = {"task": cfg.task, "algo": algo, "seed": cfg.seed, "output": str(out), "environment": environment,
                     "data": data, "stages": {}}
    common = dict(device=cfg.device, seed=cfg.seed)

    # 3. SFT -> RM -> RL, each a normal trainer run
    sft = train_sft(SFTConfig(model=base, data=data["sft_train"], eval_data=data["sft_eval"], output=str(out / "sft"),
                              **_settings(cfg, "sft"), **common))
    summary["stages"]["sft"] = _numbers(sft)
    preferences = _preferences(cfg, task, sft["final"], data, out, summary)
    reward_args: dict
    rm_settings = _settings(cfg, "rm")
    if rm_settings is not None:
        rm = train_rm(RMConfig(model=sft["final"], data=preferences, eval_data=data["prefs_eval"],
                               output=str(out / "rm"), **rm_settings, **common))
        summary["stages"]["rm"] = _numbers(rm)
        reward_args = {"reward_model": rm["final"]}
    else:
        reward_args = {"reward_fn": f"rlhfkit.tasks.{cfg.task}:reward"}
    rl_settings = _settings(cfg, "rl")
    if cfg.kl_coef is not None:
        rl_settings["kl_coef"] = cfg.kl_coef
    if cfg.steps is not None:
        rl_settings["steps"] = cfg.steps
    if cfg.rl_lr is not None:
        rl_settings["lr"] = cfg.rl_lr
    best = {}
    if algo in DPO_ALGOS:  # the same SFT model and the reward model's pairs, no RL (docs/dpo.md)
        rl = _train_dpo(cfg, algo, sft["final"], preferences, data["prefs_eval"], out, common)
    else:
        # The held-out probe watches the eval prompts (never trained on) and keeps the best policy.
        rl = train_rl(RLConfig(policy=sft["final"], prompts=data["prompts_train"], output=str(out / "rl"), algo=algo,
                               gold_fn=f"rlhfkit.tasks.{cfg.task}:gold", probe_data=data["prompts_eval"],
                               **reward_args, **rl_settings, **common))
        best = {"rl_best": rl["best"]} if rl.get("best") else {}
        if best:
            summary["best"] = json.loads((Path(rl["output"]) / "best.json").read_text())
    summary["stages"]["dpo" if algo in DPO_ALGOS else "rl"] = _numbers(rl)

    # 4. evaluate both policies on held-out prompts with the same reward, gold and reference (SFT)
    summary["eval"] = evaluate_both(cfg, data["prompts_eval"], sft["final"], rl["final"], reward_args,
                                    _settings(cfg, "eval"), evaluate_policy, extra=best)
    summary["time_s"] = round(time.perf_counter() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    # 5. report
    last = {"dpo": out / "dpo"} if algo in DPO_ALGOS else {"rl": out / "rl"}
    report = build_report({"sft": out / "sft", "rm": out / "rm", **last}, summary, out / "report.html")
    print("\n" + format_table({k: v for k, v in summary["eval"].items()}))
    key = "accuracy" if cfg.task == "arithmetic" else "gold"
    sft_m, rl_m = summary["eval"]["sft"], summary["eval"]["rl"]
    mean = "accuracy" if key == "accuracy" else "gold_mean"
    print(f"\n{key} (held-out, +- standard error): SFT {sft_m[mean]:.3f} +- {sft_m[key + '_se']:.3f}"
          f" -> {'DPO' if algo in DPO_ALGOS else 'RL'} {rl_m[mean]:.3f} +- {rl_m[key + '_se']:.3f}")
    print(f"\n[quickstart] done in {summary['time_s']:.0f}s; report: {report}")
    summary["final"] = rl["final"]
    summary["report"] = str(report)
    return summary


def _preferences(cfg: QuickstartConfig, task, sft_path: str, data: dict, out: Path, summary: dict) -> tuple[str, ...]:
    """The preference files the reward model (or DPO) learns from: the task's written pairs, and comparisons
    of the SFT policy's own samples where the preset asks for them (recorded in data and summary)."""
    preferences = [data["prefs_train"]] if "prefs_train" in data else []
    settings = _settings(cfg, "policy_pairs")
    if settings is not None:
        data["prefs_policy"], pairs = policy_pairs(task, sft_path, out / "data" / "prefs_policy.jsonl", seed=cfg.seed,
                                                   device=cfg.device,
                                                   max_new_tokens=_settings(cfg, "rl")["max_new_tokens"], **settings)
        summary["policy_pairs"] = pairs
        print(f"[quickstart] {pairs['pairs']} comparisons of the SFT policy's own samples for the reward model "
              f"({pairs['near_ties_dropped']} near-ties dropped)")
        if pairs["pairs"]:   # an untrained (--fast) policy may write only ties
            preferences.append(data["prefs_policy"])
    return tuple(preferences)


def _train_dpo(cfg: QuickstartConfig, algo: str, sft_path: str, preferences: tuple[str, ...], eval_path: str,
               out: Path, common: dict) -> dict:
    """`rlhfkit dpo` from the SFT policy on the pairs the reward model was trained and evaluated on."""
    from rlhfkit.trainers.dpo import DPOConfig, train_dpo

    settings = {**_settings(cfg, "dpo"), **DPO_ALGOS[algo]}
    data = preferences[0]
    if len(preferences) > 1:   # `rlhfkit dpo` reads one file: the reward model's files, joined
        data = str(out / "data" / "prefs_dpo.jsonl")
        Path(data).write_text("".join(Path(p).read_text() for p in preferences))
    return train_dpo(DPOConfig(model=sft_path, data=data, eval_data=eval_path,
                               output=str(out / "dpo"), **settings, **common))


def policy_pairs(task, policy_path: str, out_path: Path, prompts: int, seed: int, max_new_tokens: int,
                 device: str = "cpu") -> tuple[str, dict]:
    """Two samples of the policy per prompt, labelled by the task's simulated annotators (`task.label_pairs`):
    comparisons of the policy's own outputs, where the reward model must be right when RL starts.
    `prompts` prompts are drawn as the task's data draws them; sampling is seeded by `seed`.
    Writes prompt/chosen/rejected rows to `out_path`; returns (path, info: beta, agreement, pairs kept)."""
    import random

    from rlhfkit.data import load_prompts, tokenize_prompts
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.rollout import GenerationSettings, make_engine
    from rlhfkit.tasks.base import write_jsonl
    from rlhfkit.trainers.common import set_seed

    tokenizer = load_tokenizer(policy_path)
    policy = load_causal_lm(policy_path, device=device).eval()
    engine = make_engine("native", policy, tokenizer)
    texts = task.sample_prompts(random.Random(f"{seed}:policy_pairs"), prompts)
    rows, _ = tokenize_prompts(load_prompts([{"prompt": t} for t in texts]), tokenizer, 64, overlong="truncate")
    set_seed(seed)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, n=2)
    first, second = [], []
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        result = engine.generate([r["prompt_text"] for r in chunk], settings,
                                 prompt_ids=[r["prompt_ids"] for r in chunk])
        first += result.responses[0::2]
        second += result.responses[1::2]
    # the prompts as written (prompt_text may carry a chat template, which `rm` would apply again)
    labelled, info = task.label_pairs(texts, first, second, seed=seed)
    return write_jsonl(out_path, labelled), info


def evaluate_both(cfg, prompts_path: str, sft_path: str, rl_path: str, reward_args: dict, eval_settings: dict,
                  evaluate_policy, extra: dict | None = None) -> dict:
    """Evaluate SFT and RL policies on the same held-out prompts; KL/perplexity against the SFT policy.
    extra: more policies by name -> folder (the RL run's best probe checkpoint, "rl_best")."""
    from rlhfkit.data import load_prompts, prompt_fields, tokenize_prompts
    from rlhfkit.models import load_causal_lm, load_reference, load_tokenizer
    from rlhfkit.rollout import FunctionScorer, GenerationSettings, load_reward_function, load_reward_scorer
    from rlhfkit.trainers.common import set_seed

    tokenizer = load_tokenizer(sft_path)
    rows, _ = tokenize_prompts(load_prompts(prompts_path), tokenizer, 64, overlong="truncate")
    if "reward_model" in reward_args:
        scorer = load_reward_scorer(reward_args["reward_model"], tokenizer, device=cfg.device)
        scorer.add_prompts(rows)
    else:
        scorer = FunctionScorer(load_reward_function(reward_args["reward_fn"]))
    gold_fn = load_reward_function(f"rlhfkit.tasks.{cfg.task}:gold")
    gold = FunctionScorer(gold_fn)
    reference = load_reference(sft_path, device=cfg.device)
    settings = GenerationSettings(n=1, **eval_settings)
    fields = prompt_fields(rows)
    results = {}
    for name, path in (("sft", sft_path), ("rl", rl_path), *(extra or {}).items()):
        set_seed(cfg.seed + 1)
        policy = load_causal_lm(path, device=cfg.device).eval()
        m = evaluate_policy(policy, tokenizer, rows, settings, scorer, gold, reference, batch_size=64)
        responses, _ = m.pop("_responses"), m.pop("_scores")
        # standard error of gold_mean over the eval prompts: the noise of this one evaluation
        m["gold_se"] = _standard_error(gold_fn([r["prompt_text"] for r in rows], responses, **fields))
        if cfg.task == "arithmetic":
            m["accuracy"], m["accuracy_se"] = m.pop("gold_mean"), m.pop("gold_se")
        results[name] = m
    return results


@contextmanager
def _environment(threads: int):
    """For the run: torch's CPU thread count (0 keeps torch's default) and no transformers loading /
    saving bars (a dozen tiny models pass through them); yields what the numbers depend on, and puts
    both settings back afterwards (the caller's process keeps its own)."""
    import platform

    import torch
    from transformers.utils import logging as hf_logging

    saved_threads, saved_bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    if threads > 0:
        torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    try:
        yield {"threads": torch.get_num_threads(), "torch": torch.__version__,
               "transformers": importlib.metadata.version("transformers"), "python": platform.python_version(),
               "machine": platform.machine()}
    finally:
        torch.set_num_threads(saved_threads)
        if saved_bars:
            hf_logging.enable_progress_bar()


def _standard_error(values: list[float]) -> float:
    """Standard error of the mean, std / sqrt(n) (sample std, n - 1); 0.0 for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return (sum((v - mean) ** 2 for v in values) / (n - 1) / n) ** 0.5


def _numbers(result: dict) -> dict:
    """The JSON-friendly headline numbers of a stage's result."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
