"""`rlhfkit quickstart`: the whole of RLHF on a bundled task, on a laptop CPU, in minutes.

1. build a tiny model and tokenizer from a config (nothing is downloaded);
2. write the task's data as ordinary JSONL files (seeded);
3. SFT -> reward model (reviews) -> RL, each a normal run of the trainers `rlhfkit sft|rm|rl` use;
4. evaluate the SFT and RL policies on held-out prompts (score, gold, KL, perplexity, length);
5. write summary.json and a self-contained report.html, print a before/after table.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import ConfigError, option, save_config

# Per task: model size, data sizes and stage settings. "fast" shrinks everything for tests.
PRESETS = {
    "reviews": {
        "algo": "ppo", "model": dict(hidden_size=64, num_layers=2, num_heads=4),
        "sizes": {}, "fast_sizes": dict(sft_train=200, sft_eval=20, prefs_train=200, prefs_eval=40,
                                        prompts_train=40, prompts_eval=16),
        "sft": dict(epochs=8, batch_size=32, lr=3e-3, max_length=64), "fast_sft": dict(epochs=1),
        "rm": dict(epochs=2, batch_size=32, lr=1e-3, max_length=64), "fast_rm": dict(epochs=1),
        "rl": dict(steps=40, prompts_per_step=16, max_new_tokens=24, lr=3e-4, kl_coef=0.05, max_prompt_length=16,
                   ppo_epochs=2, minibatch_size=16),
        "fast_rl": dict(steps=3, prompts_per_step=4, minibatch_size=4),
        "eval": dict(max_new_tokens=24), "fast_eval": dict(),
    },
    "arithmetic": {
        "algo": "grpo", "model": dict(hidden_size=64, num_layers=2, num_heads=4),
        "sizes": {}, "fast_sizes": dict(sft_train=200, sft_eval=20, prompts_train=40, prompts_eval=16),
        "sft": dict(epochs=3, batch_size=32, lr=3e-3, max_length=32), "fast_sft": dict(epochs=1),
        "rm": None, "fast_rm": None,
        "rl": dict(steps=40, prompts_per_step=8, n=8, max_new_tokens=6, lr=3e-4, kl_coef=0.01, max_prompt_length=16),
        "fast_rl": dict(steps=3, prompts_per_step=2, n=4),
        "eval": dict(max_new_tokens=6), "fast_eval": dict(),
    },
}


@dataclass
class QuickstartConfig:
    """`rlhfkit quickstart`: SFT -> reward model -> RL -> eval -> report on a bundled task."""

    task: str = option("reviews", "bundled task", choices=("reviews", "arithmetic"))
    algo: str | None = option(None, "RL algorithm (default: ppo for reviews, grpo for arithmetic)")
    output: str = option("runs/quickstart", "output folder (one subfolder per stage, summary.json, report.html)")
    fast: bool = option(False, "a much smaller run (seconds), for tests and smoke checks")
    kl_coef: float | None = option(None, "override beta; 0 runs the reward-hacking experiment (no KL leash)")
    steps: int | None = option(None, "override the number of RL steps")
    rl_lr: float | None = option(None, "override the RL learning rate")
    seed: int = option(0, "seed for data, model initialisation and sampling")
    device: str = option("cpu", "cpu (the quickstart is sized for a laptop CPU), cuda or auto")

    def __post_init__(self):
        if self.task not in PRESETS:
            raise ConfigError(f"unknown task '{self.task}'; choose one of {', '.join(PRESETS)}")


def _settings(cfg: QuickstartConfig, key: str) -> dict | None:
    preset = PRESETS[cfg.task]
    base = preset[key]
    if base is None:
        return None
    return {**base, **(preset[f"fast_{key}"] if cfg.fast else {})}


def run_quickstart(cfg: QuickstartConfig) -> dict:
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
    task = get_task(cfg.task)
    preset = PRESETS[cfg.task]
    algo = cfg.algo or preset["algo"]
    sizes = preset["fast_sizes"] if cfg.fast else preset["sizes"]
    print(f"[quickstart] task={cfg.task} algo={algo} output={out}")
    # 1-2. data and a tiny model built from the task's vocabulary
    data = task.write_data(out / "data", seed=cfg.seed, **sizes)
    base = save_tiny(out / "base_model", task.corpus(), level=task.tokenizer_level, seed=cfg.seed, **preset["model"])
    summary: dict = {"task": cfg.task, "algo": algo, "output": str(out), "data": data, "stages": {}}
    common = dict(device=cfg.device, seed=cfg.seed)

    # 3. SFT -> RM -> RL, each a normal trainer run
    sft = train_sft(SFTConfig(model=base, data=data["sft_train"], eval_data=data["sft_eval"], output=str(out / "sft"),
                              **_settings(cfg, "sft"), **common))
    summary["stages"]["sft"] = _numbers(sft)
    reward_args: dict
    rm_settings = _settings(cfg, "rm")
    if rm_settings is not None:
        rm = train_rm(RMConfig(model=sft["final"], data=data["prefs_train"], eval_data=data["prefs_eval"],
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
    rl = train_rl(RLConfig(policy=sft["final"], prompts=data["prompts_train"], output=str(out / "rl"), algo=algo,
                           gold_fn=f"rlhfkit.tasks.{cfg.task}:gold", **reward_args, **rl_settings, **common))
    summary["stages"]["rl"] = _numbers(rl)

    # 4. evaluate both policies on held-out prompts with the same reward, gold and reference (SFT)
    summary["eval"] = evaluate_both(cfg, data["prompts_eval"], sft["final"], rl["final"], reward_args,
                                    _settings(cfg, "eval"), evaluate_policy)
    summary["time_s"] = round(time.perf_counter() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    # 5. report
    report = build_report({"sft": out / "sft", "rm": out / "rm", "rl": out / "rl"}, summary, out / "report.html")
    print("\n" + format_table({k: v for k, v in summary["eval"].items()}))
    print(f"\n[quickstart] done in {summary['time_s']:.0f}s; report: {report}")
    summary["final"] = rl["final"]
    summary["report"] = str(report)
    return summary


def evaluate_both(cfg, prompts_path: str, sft_path: str, rl_path: str, reward_args: dict, eval_settings: dict,
                  evaluate_policy) -> dict:
    """Evaluate SFT and RL policies on the same held-out prompts; KL/perplexity against the SFT policy."""
    from rlhfkit.data import load_prompts, tokenize_prompts
    from rlhfkit.models import load_causal_lm, load_reference, load_reward_model, load_tokenizer
    from rlhfkit.rollout import FunctionScorer, GenerationSettings, RewardModelScorer, load_reward_function
    from rlhfkit.trainers.common import set_seed

    tokenizer = load_tokenizer(sft_path)
    rows, _ = tokenize_prompts(load_prompts(prompts_path), tokenizer, 64, overlong="truncate")
    if "reward_model" in reward_args:
        scorer = RewardModelScorer(load_reward_model(reward_args["reward_model"], device=cfg.device), tokenizer)
    else:
        scorer = FunctionScorer(load_reward_function(reward_args["reward_fn"]))
    gold = FunctionScorer(load_reward_function(f"rlhfkit.tasks.{cfg.task}:gold"))
    reference = load_reference(sft_path, device=cfg.device)
    settings = GenerationSettings(n=1, **eval_settings)
    results = {}
    for name, path in (("sft", sft_path), ("rl", rl_path)):
        set_seed(cfg.seed + 1)
        policy = load_causal_lm(path, device=cfg.device).eval()
        m = evaluate_policy(policy, tokenizer, rows, settings, scorer, gold, reference, batch_size=64)
        m.pop("_responses"), m.pop("_scores")
        if cfg.task == "arithmetic":
            m["accuracy"] = m.pop("gold_mean")
        results[name] = m
    return results


def _numbers(result: dict) -> dict:
    """The JSON-friendly headline numbers of a stage's result."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
