"""PPO and TRPO side by side on the bundled `reviews` task: score, KL per step, time per step (issue 8).

1. Prepare once, with the quickstart's own preset (`rlhfkit.quickstart.PRESETS["reviews"]`): the
   task's data, a tiny model, SFT, then the reward model (the same stages `rlhfkit quickstart` runs).
   Kept under <out>/prep and reused while the preset is unchanged.
2. `train_rl` with `--algo ppo` and `--algo trpo` from that SFT policy, reward model and prompt file,
   with the quickstart's RL settings, for each seed, interleaved (ppo s0, trpo s0, ppo s1, ...) so
   that load changes on a shared machine hit both alike. TRPO keeps its documented defaults
   (`max_kl` 0.01, one step per batch: `ppo_epochs` 1); every other setting is PPO's.
3. Per run, from metrics.jsonl: `reward/score_mean` and `reward/gold_mean` (first / last 10 steps),
   the KL(old||new) the loop logs (PPO `policy/approx_kl`, TRPO `trpo/kl`), `kl/mean` at the end,
   and the median `time/step_s` and `time/train_s`.
4. The held-out evaluation of each final policy, as `rlhfkit quickstart` does it: one sample per
   held-out prompt, scored by the reward model and the gold function, KL to the SFT policy.

What the loop logs as KL(old||new) is not the same quantity for the two: TRPO's `trpo/kl` is the
exact full-vocabulary KL of the accepted step, while PPO's `policy/approx_kl` is the sampled k3
estimate taken *before* each minibatch's optimizer step, averaged over epochs (with 2 epochs and
one minibatch: the mean of 0 and the KL after the first of two steps). So the script also measures,
for both, the same thing after the whole update: the exact mean per-token KL(pi_rollout || pi_updated)
over the batch's response tokens (logged as bench/step_kl_full, with its k3 estimate bench/step_kl_k3),
from one no-grad forward before and one after `run_updates`. Those forwards do not touch the RNG or
the weights; their time (bench/measure_s) is subtracted from the step times reported.

    python bench/ppo_vs_trpo.py [--out DIR] [--seeds 0 1 2] [--steps N] [--json results.json]
    python bench/ppo_vs_trpo.py --arms trpo:max_kl=0.002 --json kl002.json   # another arm, same SFT/RM
    python bench/ppo_vs_trpo.py --report results.json kl002.json             # one table from both
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import statistics
import sys
import tempfile
import subprocess
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TASK = "reviews"
ARMS = ("ppo", "trpo")  # an arm: an algorithm, optionally with overrides, "trpo:max_kl=0.002"
# TRPO's documented setting (docs/rl/trpo.md): one trust-region step per batch of experience.
TRPO_OVERRIDES = dict(ppo_epochs=1)
EVAL_SEED = 1234
WINDOW = 10  # steps averaged at the start and at the end of a run


# ---------------------------------------------------------------- 1. prepare (SFT, reward model)

def prepare(root: Path) -> dict:
    """Data, SFT policy and reward model from the quickstart's preset; reused when the preset is unchanged."""
    from rlhfkit.models.tiny import save_tiny
    from rlhfkit.quickstart import PRESETS
    from rlhfkit.tasks import get_task
    from rlhfkit.trainers.rm import RMConfig, train_rm
    from rlhfkit.trainers.sft import SFTConfig, train_sft

    preset = PRESETS[TASK]
    wanted = {k: preset[k] for k in ("model", "sizes", "sft", "rm")}
    marker = root / "prepared.json"
    if marker.is_file() and json.loads(marker.read_text())["preset"] == wanted:
        print(f"[prepare] reusing {root}")
        return json.loads(marker.read_text())["paths"]
    task = get_task(TASK)
    t0 = time.perf_counter()
    data = task.write_data(root / "data", seed=0, **preset["sizes"])
    base = save_tiny(root / "base_model", task.corpus(), level=task.tokenizer_level, seed=0, **preset["model"])
    common_args = dict(device="cpu", seed=0)
    sft = train_sft(SFTConfig(model=base, data=data["sft_train"], eval_data=data["sft_eval"],
                              output=str(root / "sft"), **preset["sft"], **common_args))
    rm = train_rm(RMConfig(model=sft["final"], data=data["prefs_train"], eval_data=data["prefs_eval"],
                           output=str(root / "rm"), **preset["rm"], **common_args))
    paths = {"sft": sft["final"], "rm": rm["final"], "prompts_train": data["prompts_train"],
             "prompts_eval": data["prompts_eval"], "prepare_s": round(time.perf_counter() - t0, 1),
             "rm_eval_accuracy": rm.get("eval/accuracy")}
    marker.write_text(json.dumps({"preset": wanted, "paths": paths}, indent=2))
    return paths


# ---------------------------------------------------------------- 2. the runs, with the step KL measured

def measure_step_kl(run_updates):
    """Wrap the loop's `run_updates`: exact KL(pi_rollout || pi_updated) of the whole update, both algorithms."""
    from rlhfkit.algos import logprobs_from_logits, mean_kl_old_new
    from rlhfkit.models import response_logits

    @functools.wraps(run_updates)
    def wrapped(ctx, step, batch, *args, **kwargs):
        cfg, models = ctx.cfg, ctx.models
        R = batch.response_length

        def logits():  # (B, R, V) at the sampling temperature, as every logprob of the loop
            with torch.no_grad():
                z = response_logits(models.policy, batch.input_ids, batch.attention_mask, batch.position_ids, R)
            return z[:, :-1].float() / cfg.temperature

        t = time.perf_counter()
        before = logits()
        spent = time.perf_counter() - t
        out = run_updates(ctx, step, batch, *args, **kwargs)
        t = time.perf_counter()
        after = logits()
        mask, labels = batch.loss_mask, batch.input_ids[:, -R:]
        full = float(mean_kl_old_new(before, after, mask))
        k3 = float(mean_kl_old_new(logprobs_from_logits(before, labels), logprobs_from_logits(after, labels), mask,
                                   estimator="k3"))
        spent += time.perf_counter() - t
        return {**out, "bench/step_kl_full": full, "bench/step_kl_k3": k3, "bench/measure_s": spent}

    return wrapped


def parse_arm(arm: str) -> tuple[str, dict]:
    """"trpo:max_kl=0.002,damping=0.1" -> ("trpo", {"max_kl": 0.002, "damping": 0.1})."""
    algo, _, rest = arm.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--arms {arm!r}: write overrides as field=value, e.g. trpo:max_kl=0.002")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return algo, overrides


def rl_settings(arm: str, steps: int | None) -> dict:
    """The quickstart's RL preset, TRPO's documented defaults for trpo, then the arm's overrides."""
    from rlhfkit.quickstart import PRESETS

    algo, overrides = parse_arm(arm)
    rl = dict(PRESETS[TASK]["rl"])
    if steps is not None:
        rl["steps"] = steps
    if algo == "trpo":
        rl.update(TRPO_OVERRIDES)
    return {**rl, **overrides}


def run_dir_name(arm: str, seed: int) -> str:
    return arm.replace(":", "-").replace(",", "-").replace("=", "") + f"-s{seed}"


def run_one(arm: str, seed: int, prep: dict, out: Path, steps: int | None) -> Path:
    from rlhfkit.trainers.rl import RLConfig, train_rl

    run_dir = out / run_dir_name(arm, seed)
    cfg = RLConfig(policy=prep["sft"], reward_model=prep["rm"], prompts=prep["prompts_train"], output=str(run_dir),
                   algo=parse_arm(arm)[0], gold_fn=f"rlhfkit.tasks.{TASK}:gold", device="cpu", seed=seed,
                   save_every=0, **rl_settings(arm, steps))
    if (run_dir / "metrics.jsonl").is_file():
        (run_dir / "metrics.jsonl").unlink()  # a fresh run, not appended to an older one
    train_rl(cfg)
    return run_dir


# ---------------------------------------------------------------- 3-4. what each run did

def read_metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "event" not in r and "reward/score_mean" in r]


def mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else float("nan")


def summarize_run(algo: str, rows: list[dict]) -> dict:
    col = lambda k: [r[k] for r in rows if k in r]  # noqa: E731
    step_s = [r["time/step_s"] - r.get("bench/measure_s", 0.0) for r in rows[1:]]  # step 1 warms up
    train_s = [r["time/train_s"] - r.get("bench/measure_s", 0.0) for r in rows[1:]]
    logged_kl = "trpo/kl" if algo == "trpo" else "policy/approx_kl"
    s = {"steps": len(rows),
         "score_first": mean(col("reward/score_mean")[:WINDOW]), "score_last": mean(col("reward/score_mean")[-WINDOW:]),
         "gold_first": mean(col("reward/gold_mean")[:WINDOW]), "gold_last": mean(col("reward/gold_mean")[-WINDOW:]),
         "kl_ref_last": mean(col("kl/mean")[-WINDOW:]),
         "logged_kl_name": logged_kl, "logged_kl_mean": mean(col(logged_kl)),
         "step_kl_full_mean": mean(col("bench/step_kl_full")), "step_kl_full_max": max(col("bench/step_kl_full")),
         "step_kl_k3_mean": mean(col("bench/step_kl_k3")),
         "step_s_median": common.median(step_s), "train_s_median": common.median(train_s),
         "generate_s_median": common.median(r["time/generate_s"] for r in rows[1:])}
    if algo == "trpo":
        s.update({"trpo_accepted": mean(col("trpo/accepted")), "trpo_line_search_steps": mean(col("trpo/line_search_steps")),
                  "trpo_cg_residual_median": common.median(col("trpo/cg_residual"))})
    else:
        s["ppo_clipfrac"] = mean(col("policy/clipfrac"))
    return s


def held_out(prep: dict, policy_paths: dict) -> dict:
    """Quickstart-style evaluation of each policy on the held-out prompts (reward model, gold, KL to SFT)."""
    from rlhfkit.data import load_prompts, tokenize_prompts
    from rlhfkit.evaluate import evaluate_policy
    from rlhfkit.models import load_causal_lm, load_reference, load_reward_model, load_tokenizer
    from rlhfkit.quickstart import PRESETS
    from rlhfkit.rollout import FunctionScorer, GenerationSettings, RewardModelScorer, load_reward_function
    from rlhfkit.trainers.common import set_seed

    tokenizer = load_tokenizer(prep["sft"])
    rows, _ = tokenize_prompts(load_prompts(prep["prompts_eval"]), tokenizer, 64, overlong="truncate")
    scorer = RewardModelScorer(load_reward_model(prep["rm"], device="cpu"), tokenizer)
    gold = FunctionScorer(load_reward_function(f"rlhfkit.tasks.{TASK}:gold"))
    reference = load_reference(prep["sft"], device="cpu")
    settings = GenerationSettings(n=1, **PRESETS[TASK]["eval"])
    out = {}
    for name, path in policy_paths.items():
        set_seed(EVAL_SEED)
        m = evaluate_policy(load_causal_lm(path, device="cpu").eval(), tokenizer, rows, settings, scorer, gold,
                            reference, batch_size=64)
        out[name] = {k: m[k] for k in ("n", "score_mean", "gold_mean", "kl_to_ref", "length_mean") if k in m}
    return out


# ---------------------------------------------------------------- the table

ROWS = [  # (label, key in the run summary, format)
    ("train score, first 10 steps", "score_first", "{:.3f}"),
    ("train score, last 10 steps", "score_last", "{:.3f}"),
    ("train gold, first 10 steps", "gold_first", "{:.3f}"),
    ("train gold, last 10 steps", "gold_last", "{:.3f}"),
    ("held-out score (RM), final policy", "eval_score", "{:.3f}"),
    ("held-out gold, final policy", "eval_gold", "{:.3f}"),
    ("held-out KL to SFT (nats/seq)", "eval_kl", "{:.2f}"),
    ("`kl/mean` to reference, last 10 steps", "kl_ref_last", "{:.2f}"),
    ("logged KL(old‖new) per step (mean)", "logged_kl_mean", "{:.4f}"),
    ("exact KL(rollout‖updated) per step, mean", "step_kl_full_mean", "{:.4f}"),
    ("exact KL(rollout‖updated) per step, max", "step_kl_full_max", "{:.4f}"),
    ("k3 estimate of it on the batch's own sampled tokens", "step_kl_k3_mean", "{:.4f}"),
    ("PPO `policy/clipfrac` (mean)", "ppo_clipfrac", "{:.4f}"),
    ("TRPO `trpo/line_search_steps` (mean)", "trpo_line_search_steps", "{:.2f}"),
    ("TRPO `trpo/cg_residual` (median)", "trpo_cg_residual_median", "{:.2f}"),
    ("time per step, median (s)", "step_s_median", "{:.2f}"),
    ("of which update (`time/train_s`), median (s)", "train_s_median", "{:.2f}"),
]


def spread(xs: list[float], fmt: str) -> str:
    """mean ± sample standard deviation over seeds."""
    xs = [x for x in xs if x == x]
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{fmt.format(statistics.fmean(xs))} ± {fmt.format(sd)}"


def table(runs: dict, sft_eval: dict | None) -> str:
    arms = list(runs)
    lines = ["| | " + " | ".join(f"`{a}`" for a in arms) + " |", "|---|" + "---|" * len(arms)]
    for label, key, fmt in ROWS:
        cells = [spread([r[key] for r in runs[a] if key in r], fmt) for a in arms]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if sft_eval:
        lines.append(f"\nSFT policy, same held-out evaluation: score {sft_eval['score_mean']:.3f}, "
                     f"gold {sft_eval['gold_mean']:.3f}.")
    return "\n".join(lines)


def report(paths: list[str]) -> dict:
    """One table from several results files (arms run in separate invocations)."""
    runs, sft_eval = {}, None
    for path in paths:
        res = json.loads(Path(path).read_text())
        runs.update(res["runs"])
        sft_eval = sft_eval or res.get("sft_eval")
        print(f"{path}: seeds {res['seeds']}, {res['code']}; {res['machine']}; total {res['total_s']:.0f}s")
    print("\n" + table(runs, sft_eval))
    return {"runs": runs, "sft_eval": sft_eval}


def code_version() -> str:
    """The commit, and whether the working tree had uncommitted changes to the package."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "rlhfkit"], cwd=root, capture_output=True,
                               text=True).stdout
    except OSError:
        return "unknown"
    return head.strip() + (" + uncommitted changes in rlhfkit/" if dirty.strip() else "")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "rlhfkit-ppo-vs-trpo"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS),
                   help="algorithms, each optionally with RLConfig overrides: ppo trpo trpo:max_kl=0.002")
    p.add_argument("--report", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="run nothing: print one table from the runs of these results files")
    p.add_argument("--steps", type=int, default=None, help="RL steps (default: the quickstart's preset)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (see bench/common.py)")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation of the final policies")
    p.add_argument("--json", default=None, help="results file (default: <out>/results.json)")
    args = p.parse_args(argv)
    if args.report:
        return report(args.report)
    common.set_threads(args.threads)
    # bench/* are this script's own columns in metrics.jsonl, not metrics of the library.
    warnings.filterwarnings("ignore", message="unknown metric 'bench/")
    out = Path(args.out)
    t0 = time.perf_counter()
    prep = prepare(out / "prep")

    import rlhfkit.trainers.rl_step as rl_step

    rl_step.run_updates = measure_step_kl(rl_step.run_updates)  # the step calls it through its module
    runs = {a: [] for a in args.arms}
    finals = {}
    for seed in args.seeds:
        for arm in args.arms:  # interleaved: ppo s0, trpo s0, ppo s1, ...
            print(f"\n[bench] {arm} seed {seed}  ({common.machine()})", flush=True)
            run_dir = run_one(arm, seed, prep, out, args.steps)
            runs[arm].append({"seed": seed, "load_avg": os.getloadavg()[0],
                              **summarize_run(parse_arm(arm)[0], read_metrics(run_dir))})
            finals[f"{arm} s{seed}"] = str(run_dir / "final")
    sft_eval = None
    if not args.no_eval:
        evals = held_out(prep, {"sft": prep["sft"], **finals})
        sft_eval = evals.pop("sft")
        for arm in args.arms:
            for r in runs[arm]:
                e = evals[f"{arm} s{r['seed']}"]
                r.update(eval_score=e["score_mean"], eval_gold=e["gold_mean"], eval_kl=e.get("kl_to_ref"))
    results = {"task": TASK, "settings": {a: rl_settings(a, args.steps) for a in args.arms}, "seeds": args.seeds,
               "prepare": prep, "machine": common.machine(), "code": code_version(), "threads": args.threads,
               "total_s": round(time.perf_counter() - t0, 1), "sft_eval": sft_eval, "runs": runs}
    print("\n" + table(runs, sft_eval))
    print(f"\nmean ± sd over seeds {args.seeds}; {results['machine']}; total {results['total_s']:.0f}s")
    path = Path(args.json or out / "results.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"[bench] results: {path}")
    return results


if __name__ == "__main__":
    main()
