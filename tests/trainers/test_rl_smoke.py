"""Every algorithm runs 3 steps on a tiny model, from Python and from the CLI; params move, metrics finite."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhfkit.trainers.algorithms import ALGORITHMS

REQUIRED = ["step", "reward/score_mean", "reward/score_std", "kl/mean", "kl/coef", "policy/entropy",
            "policy/clipfrac", "policy/approx_kl", "loss/policy", "response/length_mean",
            "response/eos_fraction", "time/step_s", "time/generate_s"]


def rl_config(tiny_dir, data_dir, out, **kw):
    from rlhfkit.trainers.rl import RLConfig

    base = dict(policy=tiny_dir, prompts=str(data_dir / "prompts.jsonl"), output=str(out),
                reward_fn=f"{data_dir / 'reward.py'}:good_fraction", steps=3, prompts_per_step=2,
                max_new_tokens=6, lr=1e-3, device="cpu", seed=0)
    base.update(kw)
    return RLConfig(**base)


def read_metrics(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r and r["step"] > 0]  # step 0: the starting policy's probe


def final_params(path):
    from rlhfkit.models import load_causal_lm
    return torch.cat([p.detach().flatten() for p in load_causal_lm(path).parameters()])


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithm_runs_three_steps(algo, tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.rl import train_rl

    cfg = rl_config(tiny_dir, data_dir, tmp_path / algo, algo=algo)
    result = train_rl(cfg)
    rows = read_metrics(tmp_path / algo)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in REQUIRED:
        spec = ALGORITHMS[algo]
        if key == "policy/clipfrac" and (spec.policy_loss == "penalty" or spec.update == "trpo"):
            continue  # ppo-penalty does not clip; trpo has no clipped loss
        assert key in rows[-1], key
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float):
                assert math.isfinite(value), (key, value)
    assert not torch.equal(final_params(tiny_dir), final_params(result["final"]))
    if ALGORITHMS[algo].critic:
        assert "loss/value" in rows[-1] and "value/explained_variance" in rows[-1]
        assert (tmp_path / algo / "final" / "critic").is_dir()


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_cli_rl_runs(algo, tiny_dir, data_dir, tmp_path):
    from rlhfkit.cli import main

    out = tmp_path / "cli"
    code = main(["rl", "--algo", algo, "--policy", tiny_dir, "--prompts", str(data_dir / "prompts.jsonl"),
                 "--reward-fn", f"{data_dir / 'reward.py'}:good_fraction", "--output", str(out), "--steps", "2",
                 "--prompts-per-step", "2", "--max-new-tokens", "4", "--device", "cpu"])
    assert code == 0
    assert len(read_metrics(out)) == 2
    assert (out / "config.yaml").is_file() and (out / "final" / "config.json").is_file()


def test_no_critic_no_reference_when_not_needed(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.algorithms import resolve_algorithm
    from rlhfkit.trainers.rl_setup import build_models

    cfg = rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", kl_coef=0.0)
    grpo = build_models(cfg, resolve_algorithm(cfg), "cpu")
    assert grpo.critic is None and grpo.reference is None
    cfg = rl_config(tiny_dir, data_dir, tmp_path, algo="ppo")
    ppo = build_models(cfg, resolve_algorithm(cfg), "cpu")
    assert ppo.critic is not None and ppo.reference is not None
    assert not any(p.requires_grad for p in ppo.reference.parameters())


@pytest.mark.parametrize("split", ["rows", "tokens"])
@pytest.mark.parametrize("algo,agg", [("ppo", "token-mean"), ("grpo", "seq-mean-token-mean"),
                                      ("grpo", "seq-mean-token-sum-norm")])
def test_micro_batches_give_the_whole_batch_update(algo, agg, split, tiny_dir, data_dir, tmp_path):
    from rlhfkit.models import load_critic, load_scalar_model
    from rlhfkit.trainers.rl import train_rl

    kw = dict(algo=algo, loss_agg=agg, steps=1, prompts_per_step=2, max_grad_norm=0.0, entropy_coef=0.01)
    whole = train_rl(rl_config(tiny_dir, data_dir, tmp_path / "whole", **kw))
    # rows of 5 to 11 valid tokens: a budget of 12 gives micro-batches of one or two rows of unequal sizes
    split_kw = (dict(micro_batch_size=1 if algo == "ppo" else 2) if split == "rows" else dict(micro_batch_tokens=12))
    micro = train_rl(rl_config(tiny_dir, data_dir, tmp_path / "micro", **split_kw, **kw))
    # Tolerances follow the scale of each quantity, so the test passes on any CPU (the summation
    # order of float32 sums differs between x86-64 and arm64 kernels, and between Intel and AMD).
    # - Norms and losses made of same-sign terms (grad norms, entropy, value loss): float32 sums of
    #   n terms agree to ~n * 6e-8 relative; rel=1e-4 leaves a wide margin and a wrong normalizer
    #   (a factor of 2 or more here) still fails. The gradient is what catches a wrong normalizer,
    #   which Adam's scale-invariant first step would hide in the weights.
    # - loss/policy is -mean(A * ratio) with whitened or group-centred advantages and ratio 1: a sum
    #   of terms of size |A| ~ advantages/std that cancels to ~0 (it was 1e-7 and differed by 2e-8
    #   between two CPUs). Its error follows the size of its terms, not of the result.
    for key in ("grad/norm", "loss/entropy") + (("grad/critic_norm", "loss/value") if algo == "ppo" else ()):
        assert micro[key] == pytest.approx(whole[key], rel=1e-4), key
    terms = whole["advantages/std"] + abs(whole["advantages/mean"])
    assert micro["loss/policy"] == pytest.approx(whole["loss/policy"], rel=1e-4, abs=1e-5 * terms)
    # The weights: compare the updates as vectors. Adam's first step is ~lr * sign(g) per entry, so
    # an entry whose gradient is float noise can move differently on another CPU; the update as a
    # whole agrees to ~3e-6 relative here, and normalizing each micro-batch by its own count moves
    # it by 2e-3 to 4e-3 (Adam's sign-like first step hides most of a reweighting): 1e-4 sits
    # between, with a factor of 20 or more to each side.
    start = final_params(tiny_dir)
    a, b = final_params(whole["final"]), final_params(micro["final"])
    assert not torch.allclose(a, start)
    assert relative_gap(a - start, b - start) < 1e-4
    if algo == "ppo":
        ca = torch.cat([p.flatten() for p in load_scalar_model(tmp_path / "whole" / "final" / "critic").parameters()])
        cb = torch.cat([p.flatten() for p in load_scalar_model(tmp_path / "micro" / "final" / "critic").parameters()])
        c0 = torch.cat([p.flatten() for p in load_critic(tiny_dir).parameters()])  # the critic's start
        assert relative_gap(ca - c0, cb - c0) < 1e-4


def relative_gap(x: torch.Tensor, y: torch.Tensor) -> float:
    """|x - y| / |x| (L2): how far two update vectors are apart, on the scale of the update."""
    x, y = x.detach(), y.detach()
    return float((x - y).norm() / x.norm().clamp(min=1e-12))


def test_lora_policy_uses_the_disabled_adapter_as_reference(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.algorithms import resolve_algorithm
    from rlhfkit.trainers.rl import train_rl
    from rlhfkit.trainers.rl_setup import build_models

    cfg = rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", lora_r=4, steps=2)
    models = build_models(cfg, resolve_algorithm(cfg), "cpu")
    assert models.reference is None and models.ref_context is not None  # no second copy in memory
    result = train_rl(cfg)
    rows = read_metrics(tmp_path)
    assert len(rows) == 2 and rows[-1]["kl/mean"] != 0.0  # the KL to the adapter-free model is measured
    assert not torch.equal(final_params(tiny_dir), final_params(result["final"]))  # merged adapters saved


def test_start_event_records_the_cpu_thread_count(tiny_dir, data_dir, tmp_path):
    # Float sums (and so every sampled token after them) depend on the thread count: the run says which.
    from rlhfkit.trainers.rl import train_rl

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # below the core count: configure_cpu_threads leaves it as it is
    try:
        out = train_rl(rl_config(tiny_dir, data_dir, tmp_path / "run", algo="grpo", steps=1))
    finally:
        torch.set_num_threads(before)
    events = [json.loads(line) for line in open(f"{out['output']}/metrics.jsonl")]
    start = next(e for e in events if e.get("event") == "start")
    assert start["threads"] == 1 and "1 CPU thread(s)" in start["message"]
