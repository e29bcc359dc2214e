"""SFT, DPO, IPO, SimPO and PPO on the bundled `reviews` task, judged by its gold reward (issue 21).

Per seed, exactly the quickstart's pipeline and preset (`rlhfkit.quickstart.PRESETS["reviews"]`):
the task's data, a tiny model, SFT, the reward model; then, from that SFT policy,
  ppo                     `train_rl` with the quickstart's RL settings and that reward model,
  dpo / ipo / simpo ...   `train_dpo` on the pairs the reward model was trained on (`--algo` of the
                          quickstart: its DPO preset plus the loss, and SimPO's beta),
and every policy (SFT included) evaluated as the quickstart does it: one sample per held-out prompt
(256), gold reward, reward-model score, KL to the SFT policy, length. Wall time is each stage's own
(training, not evaluation), on 1 CPU thread.

    python bench/dpo_vs_ppo.py --out /tmp/dpo_vs_ppo --seeds 0 1 2 --json results.json
    python bench/dpo_vs_ppo.py --report results.json      # the markdown table again
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

METHODS = ("ppo", "dpo", "ipo", "simpo")


def run_seed(seed: int, root: Path, methods, overrides: dict) -> dict:
    from rlhfkit.evaluate import evaluate_policy
    from rlhfkit.models.tiny import save_tiny
    from rlhfkit.quickstart import DPO_ALGOS, PRESETS, QuickstartConfig, _environment, _settings, evaluate_both
    from rlhfkit.tasks import get_task
    from rlhfkit.trainers.dpo import DPOConfig, train_dpo
    from rlhfkit.trainers.rl import RLConfig, train_rl
    from rlhfkit.trainers.rm import RMConfig, train_rm
    from rlhfkit.trainers.sft import SFTConfig, train_sft

    out = root / f"seed{seed}"
    cfg = QuickstartConfig(task="reviews", seed=seed, output=str(out), threads=1)
    preset = PRESETS["reviews"]
    common = dict(device="cpu", seed=seed)
    result: dict = {"seed": seed, "time_s": {}, "eval": {}}
    with _environment(1) as env:
        result["environment"] = env
        task = get_task("reviews")
        data = task.write_data(out / "data", seed=seed, **preset["sizes"])
        base = save_tiny(out / "base_model", task.corpus(), level=task.tokenizer_level, seed=seed, **preset["model"])
        sft = stage(result, "sft", out, lambda: train_sft(SFTConfig(
            model=base, data=data["sft_train"], eval_data=data["sft_eval"], output=str(out / "sft"),
            **_settings(cfg, "sft"), **common)))
        rm = stage(result, "rm", out, lambda: train_rm(RMConfig(
            model=sft["final"], data=data["prefs_train"], eval_data=data["prefs_eval"], output=str(out / "rm"),
            **_settings(cfg, "rm"), **common)))
        result["rm_eval_accuracy"] = rm.get("eval/accuracy")
        finals = {}
        for method in methods:
            if method == "ppo":
                r = stage(result, "ppo", out, lambda: train_rl(RLConfig(
                    policy=sft["final"], prompts=data["prompts_train"], output=str(out / "ppo"), algo="ppo",
                    reward_model=rm["final"], gold_fn="rlhfkit.tasks.reviews:gold", **_settings(cfg, "rl"), **common)))
            else:
                settings = {**_settings(cfg, "dpo"), **DPO_ALGOS[method], **overrides}
                name = method + "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
                r = stage(result, name, out, lambda: train_dpo(DPOConfig(
                    model=sft["final"], data=data["prefs_train"], eval_data=data["prefs_eval"],
                    output=str(out / name), **settings, **common)))
                result[f"{method}_train"] = {k: v for k, v in r.items() if k.startswith("eval/")}
                result["time_s"][method] = result["time_s"][name]
            finals[method] = r["final"]
        for method, path in finals.items():
            both = evaluate_both(cfg, data["prompts_eval"], sft["final"], path, {"reward_model": rm["final"]},
                                 _settings(cfg, "eval"), evaluate_policy)
            result["eval"].setdefault("sft", _strip(both["sft"]))
            result["eval"][method] = _strip(both["rl"])
    return result


def stage(result: dict, name: str, out: Path, train) -> dict:
    """Run a training stage once; a finished one (its result.json written after training) is reused."""
    done = out / name / "bench_result.json"
    if done.is_file():
        saved = json.loads(done.read_text())
    else:
        t = time.perf_counter()
        r = train()
        saved = {"result": {k: v for k, v in r.items() if isinstance(v, (int, float, str))},
                 "time_s": time.perf_counter() - t}
        done.write_text(json.dumps(saved))
    result["time_s"][name] = saved["time_s"]
    return saved["result"]


def _strip(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "samples"}


def table(results: list[dict]) -> str:
    """Mean over seeds +- standard error over seeds (n - 1), and each seed's value."""
    def cell(values, fmt="{:.3f}"):
        if not values:
            return "-"
        mean = statistics.fmean(values)
        se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
        return f"{fmt.format(mean)} +- {fmt.format(se)} ({', '.join(fmt.format(v) for v in values)})"

    names = [n for n in ("sft", *METHODS) if all(n in r["eval"] for r in results)]
    lines = ["| policy | gold reward | RM score | KL to SFT (nats) | length (tokens) | train wall time (s) |",
             "|---|---|---|---|---|---|"]
    for n in names:
        ev = [r["eval"][n] for r in results]
        times = [r["time_s"][n] for r in results if n in r["time_s"]]
        lines.append(f"| {n} | {cell([e['gold_mean'] for e in ev])} | {cell([e['score_mean'] for e in ev])} | "
                     f"{cell([e['kl_to_ref'] for e in ev], '{:.2f}')} | {cell([e['length_mean'] for e in ev], '{:.1f}')} | "
                     f"{cell(times, '{:.0f}')} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/dpo_vs_ppo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--dpo-lr", type=float, default=None, help="override the DPO preset's learning rate")
    p.add_argument("--json", default=None, help="write (or, with --report, read) the results here")
    p.add_argument("--report", nargs="*", default=None, help="print the table of these result files")
    args = p.parse_args(argv)
    if args.report is not None:
        results = [r for path in args.report for r in json.loads(Path(path).read_text())]
        print(table(results))
        return results
    overrides = {"lr": args.dpo_lr} if args.dpo_lr is not None else {}
    results = []
    for seed in args.seeds:
        results.append(run_seed(seed, Path(args.out), args.methods, overrides))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        print(table(results), flush=True)
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
