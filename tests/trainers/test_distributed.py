"""Data parallelism on CPU (gloo): 2 ranks x half the batch update the weights exactly as 1 process
on the whole batch (replicated models, and FSDP2-sharded ones), and a 2-rank checkpoint resumes in
a 2-rank run to the same end.

Each run is a real launch: `torchrun --nproc_per_node 2 -m rlhfkit ...` in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", RLHFKIT_QUIET="1")
    env.pop("WORLD_SIZE", None)
    return env


def launch(ranks: int, args: list[str]) -> subprocess.CompletedProcess:
    if ranks == 1:
        cmd = [sys.executable, "-m", "rlhfkit", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               "-m", "rlhfkit", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


def weights(path) -> dict:
    from safetensors.torch import load_file

    files = sorted(p for p in os.listdir(path) if p.endswith(".safetensors"))
    out = {}
    for f in files:
        out.update({f"{f}:{k}": v for k, v in load_file(os.path.join(path, f)).items()})
    return out


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def update_gap(a: dict, b: dict, start: dict) -> float:
    """|(a - start) - (b - start)| / |a - start| over all tensors (L2): two updates, on their own scale.

    Adam's first steps are ~lr * sign(g) per entry, so an entry whose gradient is float noise can
    step differently when sums run in another order (another CPU kind, another split over ranks);
    the update as a whole agrees to ~1e-6 relative, and a wrong normalizer moves it by percents.
    Tensors missing from `start` (a critic's new head) start at 0."""
    assert a.keys() == b.keys()
    base = {k: start[k].float() if k in start else torch.zeros_like(a[k].float()) for k in a}
    num = sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in a)
    den = sum(float(((a[k].float() - base[k]) ** 2).sum()) for k in a)
    return (num / max(den, 1e-30)) ** 0.5


def moved(a: dict, start: dict) -> float:
    return max(float((a[k].float() - start[k].float()).abs().max()) for k in a if k in start)


def metrics(path) -> list[dict]:
    rows = [json.loads(line) for line in open(os.path.join(path, "metrics.jsonl"))]
    return [r for r in rows if "event" not in r and r["step"] > 0]  # step 0: the starting policy's probe


def rl_args(tiny_dir, data_dir, out, algo: str, extra=()) -> list[str]:
    # `distinct` scores differ between responses whatever the random model samples. With a score that
    # is 0 for every response (good_fraction when no "good" is sampled), the first update follows
    # float noise (advantages ~1e-4, which Adam turns into lr-sized steps), and two correct runs differ.
    return ["rl", "--algo", algo, "--policy", str(tiny_dir), "--prompts", str(data_dir / "prompts.jsonl"),
            "--reward-fn", f"{data_dir / 'reward.py'}:distinct", "--output", str(out),
            "--max-new-tokens", "6", "--seeded-sampling", "true", "--device", "cpu", *extra]


# PPO: critic, KL in the reward, reward normalization and whitening from the global batch, and
# shuffled minibatches of 2 rows that give the ranks unequal (sometimes empty) shares.
PPO = ["--prompts-per-step", "4", "--minibatch-size", "2", "--ppo-epochs", "2", "--kl-coef", "0.05",
       "--normalize-rewards", "true", "--lr", "1e-3", "--steps", "2"]
# GRPO: groups of 4 (never split across ranks), KL in the loss, single pass; token-sum aggregation.
# (`--samples-per-prompt` is the field `n`: torchrun would read `--n` as an abbreviation of its own flags.)
GRPO = ["--prompts-per-step", "2", "--samples-per-prompt", "4", "--kl-coef", "0.04", "--lr", "1e-3", "--steps", "2",
        "--loss-agg", "seq-mean-token-sum-norm"]


def assert_same_run(one, two, critic: bool, start: dict):
    w1, w2 = weights(one / "final"), weights(two / "final")
    assert update_gap(w1, w2, start) < 1e-3
    if critic:
        assert update_gap(weights(one / "final" / "critic"), weights(two / "final" / "critic"), start) < 1e-3
    # Logged metrics are the global batch's, written once (by rank 0).
    m1, m2 = metrics(one), metrics(two)
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2]
    assert m1[0]["reward/score_std"] > 1e-3  # a real signal to follow, not float noise (see rl_args)
    for r1, r2 in zip(m1, m2):
        # Sums of same-sign terms agree to ~1e-6 relative; kl/mean at step 1 is float noise around 0
        # (policy = reference), hence abs 1e-5 against logprobs of size ~1. loss/policy cancels to
        # ~0 over whitened advantages: its tolerance follows the size of its terms (see
        # test_rl_smoke.py's micro-batch test).
        for key in ("reward/score_mean", "response/length_mean", "kl/mean", "policy/entropy",
                    "grad/norm", "grad/critic_norm", "advantages/std"):
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-5), key
        terms = r1["advantages/std"] + abs(r1["advantages/mean"])
        assert r2["loss/policy"] == pytest.approx(r1["loss/policy"], rel=1e-4, abs=1e-5 * terms)


# A token budget: each minibatch's rows are spread over the ranks by tokens (`balance_rows`), the ids
# gathered from every rank, and split into micro-batches of at most 12 valid tokens.
@pytest.mark.parametrize("algo,extra", [("ppo", PPO), ("grpo", GRPO), ("ppo", PPO + ["--micro-batch-tokens", "12"]),
                                        ("grpo", GRPO + ["--micro-batch-tokens", "12"])])
def test_two_ranks_equal_one_process(tmp_path, tiny_dir, data_dir, algo, extra):
    one, two = tmp_path / "one", tmp_path / "two"
    launch(1, rl_args(tiny_dir, data_dir, one, algo, extra))
    launch(2, rl_args(tiny_dir, data_dir, two, algo, extra))
    assert moved(weights(one / "final"), weights(tiny_dir)) > 1e-4  # the steps did something
    assert_same_run(one, two, critic=algo == "ppo", start=weights(tiny_dir))


def test_fsdp_ppo_equals_one_process_and_resumes(tmp_path, tiny_dir, data_dir):
    # Policy, critic and reference sharded with FSDP2 over 2 ranks (gloo): the same update as one
    # process, unequal minibatch shares padded with masked forwards; sharded checkpoints resume.
    extra = PPO + ["--save-every", "1"]
    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    launch(1, rl_args(tiny_dir, data_dir, one, "ppo", extra))
    launch(2, rl_args(tiny_dir, data_dir, fsdp, "ppo", extra + ["--fsdp", "true"]))
    assert moved(weights(one / "final"), weights(tiny_dir)) > 1e-4
    assert_same_run(one, fsdp, critic=True, start=weights(tiny_dir))
    start = {f"{model}.safetensors:{key.split(':', 1)[1]}": v for key, v in weights(tiny_dir).items()
             for model in ("policy", "critic")}  # a checkpoint holds NAME.safetensors per model
    assert update_gap(weights(one / "checkpoints" / "step-000002"), weights(fsdp / "checkpoints" / "step-000002"),
                      start) < 1e-3
    cut = tmp_path / "cut"
    shutil.copytree(fsdp, cut)
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "checkpoints" / "step-000002")
    launch(2, rl_args(tiny_dir, data_dir, cut, "ppo", extra + ["--fsdp", "true", "--resume", "true"]))
    assert max_diff(weights(fsdp / "final"), weights(cut / "final")) == 0.0


def test_fsdp_reward_model_equals_one_process(tmp_path, tiny_dir, data_dir):
    # Backbone and scalar head sharded, the LM-loss head too (lm_coef > 0).
    args = ["rm", "--model", str(tiny_dir), "--data", str(data_dir / "prefs.jsonl"), "--batch-size", "4",
            "--epochs", "1", "--lr", "1e-3", "--eval-fraction", "0.25", "--lm-coef", "0.5", "--device", "cpu"]
    launch(1, args + ["--output", str(tmp_path / "one")])
    launch(2, args + ["--output", str(tmp_path / "two"), "--fsdp", "true"])
    w1, w2 = weights(tmp_path / "one" / "final"), weights(tmp_path / "two" / "final")
    assert update_gap(w1, w2, weights(tiny_dir)) < 1e-3  # the RM's head starts at 0
    stats = [json.loads((tmp_path / r / "final" / "rlhfkit_reward.json").read_text()) for r in ("one", "two")]
    assert stats[1]["reward_mean"] == pytest.approx(stats[0]["reward_mean"], rel=1e-4, abs=1e-6)


def test_sft_two_ranks_equal_one_process(tmp_path, tiny_dir, data_dir):
    args = ["sft", "--model", str(tiny_dir), "--data", str(data_dir / "sft.jsonl"), "--batch-size", "8",
            "--micro-batch-size", "2", "--epochs", "1", "--lr", "1e-3", "--eval-fraction", "0.2", "--device", "cpu"]
    launch(1, args + ["--output", str(tmp_path / "one")])
    launch(2, args + ["--output", str(tmp_path / "two")])
    launch(2, args + ["--output", str(tmp_path / "fsdp"), "--fsdp", "true"])
    w1 = weights(tmp_path / "one" / "final")
    assert moved(w1, weights(tiny_dir)) > 1e-4
    for run in ("two", "fsdp"):
        assert update_gap(w1, weights(tmp_path / run / "final"), weights(tiny_dir)) < 1e-3
        m1, m2 = metrics(tmp_path / "one"), metrics(tmp_path / run)
        # Mean cross-entropies (sums of positive terms): ~1e-6 relative between summation orders.
        assert m2[-1]["train/loss"] == pytest.approx(m1[-1]["train/loss"], rel=1e-4)
        assert m2[-1]["eval/loss"] == pytest.approx(m1[-1]["eval/loss"], rel=1e-4)


def test_two_rank_checkpoint_resumes_exactly(tmp_path, tiny_dir, data_dir):
    # Ordinary sampling (each rank its own RNG stream): the checkpoint must restore every rank's RNG.
    extra = ["--prompts-per-step", "4", "--minibatch-size", "2", "--kl-coef", "0.05", "--lr", "1e-3",
             "--steps", "3", "--save-every", "1", "--seeded-sampling", "false"]
    full = tmp_path / "full"
    launch(2, rl_args(tiny_dir, data_dir, full, "ppo", extra))
    # The same run cut after step 2: its newest checkpoint, step 2, resumed by 2 ranks.
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "checkpoints" / "step-000003")
    launch(2, rl_args(tiny_dir, data_dir, cut, "ppo", extra + ["--resume", "true"]))
    assert max_diff(weights(full / "final"), weights(cut / "final")) == 0.0
    last = [{k: v for k, v in metrics(run)[-1].items() if not k.startswith("time/")} for run in (full, cut)]
    assert last[0]["step"] == 3 and last[1] == last[0]
