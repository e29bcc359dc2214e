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
    return [r for r in rows if "event" not in r]


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
        if key == "policy/clipfrac" and ALGORITHMS[algo].policy_loss != "clip":
            continue  # ppo-penalty does not clip
        assert key in rows[-1], key
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float):
                assert math.isfinite(value), (key, value)
    assert not torch.equal(final_params(tiny_dir), final_params(result["final"]))
    if ALGORITHMS[algo].critic:
        assert "loss/value" in rows[-1] and "value/explained_variance" in rows[-1]
        assert (tmp_path / algo / "final" / "critic").is_dir()


def test_cli_rl_runs(tiny_dir, data_dir, tmp_path):
    from rlhfkit.cli import main

    out = tmp_path / "cli"
    code = main(["rl", "--algo", "grpo", "--policy", tiny_dir, "--prompts", str(data_dir / "prompts.jsonl"),
                 "--reward-fn", f"{data_dir / 'reward.py'}:good_fraction", "--output", str(out), "--steps", "2",
                 "--prompts-per-step", "2", "--max-new-tokens", "4", "--device", "cpu"])
    assert code == 0
    assert len(read_metrics(out)) == 2
    assert (out / "config.yaml").is_file() and (out / "final" / "config.json").is_file()


def test_no_critic_no_reference_when_not_needed(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.algorithms import get_algorithm
    from rlhfkit.trainers.rl import build_models

    grpo = build_models(rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", kl_coef=0.0), get_algorithm("grpo"), "cpu")
    assert grpo.critic is None and grpo.reference is None
    ppo = build_models(rl_config(tiny_dir, data_dir, tmp_path, algo="ppo"), get_algorithm("ppo"), "cpu")
    assert ppo.critic is not None and ppo.reference is not None
    assert not any(p.requires_grad for p in ppo.reference.parameters())
