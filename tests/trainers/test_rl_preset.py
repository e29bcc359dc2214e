"""`--preset ppo-max`, PPO's default passes, the signals every step logs, and the KL charged at the end.

Each PPO-max element is switched off in turn against the full preset and must change what the run
does (test_each_ppo_max_element_acts)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.trainers.conftest import write_jsonl
from tests.trainers.test_rl_smoke import final_params, read_metrics, rl_config


def test_preset_fills_what_the_run_does_not_set_and_is_recorded(tiny_dir, data_dir, tmp_path):
    from rlhfkit.config import build_config
    from rlhfkit.trainers.presets import PRESETS
    from rlhfkit.trainers.rl_config import RLConfig

    cfg = rl_config(tiny_dir, data_dir, tmp_path, preset="ppo-max", reward_clip=2.0)
    recipe = PRESETS["ppo-max"]
    for name, value in recipe.items():
        if name == "reward_clip":
            assert cfg.reward_clip == 2.0  # the run's own value wins
        elif name == "ptx_coef":
            assert cfg.ptx_coef == 0.0  # no pretraining data given: PPO-ptx stays off
        else:
            assert getattr(cfg, name) == value, name
    with_ptx = rl_config(tiny_dir, data_dir, tmp_path, preset="ppo-max", ptx_data=str(data_dir / "sft.jsonl"))
    assert with_ptx.ptx_coef == recipe["ptx_coef"]
    # the same through a YAML/CLI dict: keys given win, and the saved config reloads to the same values
    values = dict(policy=tiny_dir, prompts="p.jsonl", output=str(tmp_path), reward_fn="exact_match",
                  preset="ppo-max", normalize_rewards=False)
    built = build_config(RLConfig, values)
    assert built.normalize_rewards is False and built.scale_rewards is True
    from rlhfkit.config import save_config

    saved = yaml.safe_load(save_config(built, tmp_path).read_text())
    assert saved["preset"] == "ppo-max" and saved["scale_rewards"] is True and saved["normalize_rewards"] is False
    assert build_config(RLConfig, saved) == built


def test_preset_from_the_cli(tiny_dir, data_dir, tmp_path):
    from rlhfkit.cli import main

    out = tmp_path / "cli"
    assert main(["rl", "--preset", "ppo-max", "--policy", tiny_dir, "--prompts", str(data_dir / "prompts.jsonl"),
                 "--reward-fn", f"{data_dir / 'reward.py'}:distinct", "--output", str(out), "--steps", "2",
                 "--prompts-per-step", "2", "--max-new-tokens", "5", "--critic-warmup-steps", "1",
                 "--device", "cpu"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["preset"] == "ppo-max" and saved["critic_warmup_steps"] == 1 and saved["reward_clip"] == 5.0
    rows = read_metrics(out)
    assert "reward/normalized_mean" in rows[0] and "reward/return_std" in rows[0]


# One run of the whole preset against runs with one element off; each must leave a trace.
BASE = dict(preset="ppo-max", steps=2, prompts_per_step=4, max_new_tokens=5, lr=1e-3, critic_warmup_steps=1)
OFF = {
    "normalize_rewards": dict(normalize_rewards=False),
    "reward_clip": dict(reward_clip=None),
    "scale_rewards": dict(scale_rewards=False),
    "whiten_advantages": dict(whiten_advantages=False),
    "value_clip": dict(value_clip=None),
    "critic_warmup_steps": dict(critic_warmup_steps=0),
    "max_grad_norm": dict(max_grad_norm=0.0),
    "ptx_coef": dict(ptx_coef=0.0),
    "kl_coef": dict(kl_coef=0.0),
}


@pytest.fixture(scope="module")
def big_reward(tmp_path_factory):
    # Scores far from 0 with an outlier: normalization, clipping and scaling all have something to do.
    d = tmp_path_factory.mktemp("reward")
    (d / "r.py").write_text("def r(prompts, responses, **f):\n"
                            "    return [50.0 * len(set(x.split())) + 7.0 * x.count('o') + (400.0 if i == 0 else 0.0)"
                            " for i, x in enumerate(responses)]\n")
    return f"{d / 'r.py'}:r"


def _run(tiny_dir, data_dir, out, reward_fn, **kw):
    from rlhfkit.trainers.rl import train_rl

    cfg = rl_config(tiny_dir, data_dir, out, reward_fn=reward_fn, ptx_data=str(data_dir / "sft.jsonl"),
                    **{**BASE, **kw})
    train_rl(cfg)
    return read_metrics(out)


@pytest.fixture(scope="module")
def full_run(tiny_dir, data_dir, big_reward, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    return out, _run(tiny_dir, data_dir, out, big_reward)


@pytest.mark.parametrize("element", sorted(OFF))
def test_each_ppo_max_element_acts(element, full_run, tiny_dir, data_dir, big_reward, tmp_path):
    full_out, full = full_run
    rows = _run(tiny_dir, data_dir, tmp_path, big_reward, **OFF[element])
    on, off = full[0], rows[0]
    if element == "normalize_rewards":
        assert "reward/normalized_mean" in on and "reward/normalized_mean" not in off
        assert abs(on["returns/mean"]) < abs(off["returns/mean"])  # scores of hundreds, centred on 0
    elif element == "reward_clip":
        # 4 normalized scores lie within +-1.5 sd, so the preset's 5 cannot act on one batch; a clip of
        # 0.5 must, and changes the returns the critic learns.
        tight = _run(tiny_dir, data_dir, tmp_path / "tight", big_reward, reward_clip=0.5)[0]
        assert tight["returns/mean"] != pytest.approx(off["returns/mean"], rel=1e-3)
        assert tight["reward/normalized_mean"] == pytest.approx(off["reward/normalized_mean"])  # logged before
    elif element == "scale_rewards":
        assert "reward/return_std" in on and "reward/return_std" not in off
    elif element == "whiten_advantages":
        assert on["advantages/std"] == pytest.approx(1.0, abs=1e-3) and off["advantages/std"] != pytest.approx(1.0, abs=1e-3)
    elif element == "value_clip":
        assert full[-1]["value/clipfrac"] > 0.0 and rows[-1]["value/clipfrac"] == 0.0
    elif element == "critic_warmup_steps":
        # warm-up: step 1 trains the critic alone: no policy loss, the lr schedule has not moved
        assert "loss/policy" not in on and "loss/policy" in off
        assert "loss/value" in on
    elif element == "max_grad_norm":
        assert full[-1]["grad/norm"] > 1.0  # the pre-clip norm; clipped at 1 only in the full run
        assert not torch.equal(final_params(full_out / "final"), final_params(tmp_path / "final"))
    elif element == "ptx_coef":
        assert "loss/sft" in full[-1] and "loss/sft" not in rows[-1]
    elif element == "kl_coef":
        assert on["kl/coef"] == 0.05 and off["kl/coef"] == 0.0


def test_critic_warmup_leaves_the_policy_untouched(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.rl import train_rl

    result = train_rl(rl_config(tiny_dir, data_dir, tmp_path, algo="ppo", steps=2, critic_warmup_steps=2,
                                max_new_tokens=5))
    assert torch.equal(final_params(tiny_dir), final_params(result["final"]))
    assert [r["lr"] for r in read_metrics(tmp_path)] == [1e-3, 1e-3]


def test_ppo_ptx_on_plain_text_rows(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.rl import train_rl

    text = write_jsonl(tmp_path / "pretrain.jsonl", [{"text": "the movie is very good"}, {"text": "the phone"}] * 4)
    train_rl(rl_config(tiny_dir, data_dir, tmp_path / "run", algo="grpo", steps=2, ptx_coef=1.0, ptx_data=text,
                       max_new_tokens=5))
    rows = read_metrics(tmp_path / "run")
    assert all(r["loss/sft"] > 0 for r in rows)


def test_ppo_takes_two_passes_by_default_and_the_clip_acts(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.algorithms import resolve_algorithm
    from rlhfkit.trainers.rl import train_rl

    cfg = rl_config(tiny_dir, data_dir, tmp_path, algo="ppo", steps=3, prompts_per_step=4, lr=3e-3,
                    max_new_tokens=6, reward_fn=f"{data_dir / 'reward.py'}:distinct")
    algo = resolve_algorithm(cfg)
    assert (algo.ppo_epochs, algo.minibatch_size, algo.single_pass) == (2, 4, False)
    assert resolve_algorithm(rl_config(tiny_dir, data_dir, tmp_path, algo="grpo")).ppo_epochs == 1
    train_rl(cfg)
    rows = read_metrics(tmp_path)
    assert max(r["policy/clipfrac"] for r in rows) > 0.0  # the second pass moves the ratio off 1


def test_signals_are_logged_every_step(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.rl import train_rl

    train_rl(rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", steps=2, max_new_tokens=6))  # single pass
    for row in read_metrics(tmp_path):
        assert row["response/length_p10"] <= row["response/length_p50"] <= row["response/length_p90"]
        assert 0 < row["response/distinct_1"] <= 1 and 0 <= row["response/repeat_3gram_fraction"] <= 1
        # single pass: the policy perplexity comes from the update's forward
        assert row["response/ppl_policy"] > 1.0 and row["response/ppl_ref"] > 1.0
        assert row["response/ppl_policy"] == pytest.approx(row["response/ppl_ref"], rel=0.5)


def test_kl_placement_reward_end_reaches_the_rewards(tiny_dir, data_dir, tmp_path):
    # The loop's wiring: with --kl-placement reward-end the shaped rewards are kl_shaped_rewards(at_end=True).
    from rlhfkit.algos import RunningMoments, kl_shaped_rewards
    from rlhfkit.rollout import Experience
    from rlhfkit.trainers.algorithms import resolve_algorithm
    from rlhfkit.trainers.rl_step import shape_rewards

    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    lp, ref = -torch.rand(2, 3, generator=g), -torch.rand(2, 3, generator=g)
    scores = torch.tensor([1.0, -1.0])
    out = {}
    for placement in ("reward", "reward-end"):
        cfg = rl_config(tiny_dir, data_dir, tmp_path, algo="reinforce", kl_placement=placement, kl_coef=0.5)
        algo = resolve_algorithm(cfg)
        exp = Experience(prompt_ids=None, prompt_mask=None, response_ids=None, response_mask=mask, input_ids=None,
                         attention_mask=None, position_ids=None, eos=torch.ones(2, dtype=torch.bool), logprobs=lp,
                         ref_logprobs=ref, scores=scores)
        from rlhfkit.algos import MovingAverageBaseline

        shape_rewards(cfg, algo, exp, 0.5, RunningMoments(), MovingAverageBaseline(0.9), None, RunningMoments())
        expected = kl_shaped_rewards(scores, lp, ref, mask, 0.5, at_end=placement == "reward-end")
        torch.testing.assert_close(exp.rewards, expected)
        out[placement] = exp.rewards
    assert not torch.allclose(out["reward"], out["reward-end"])
    torch.testing.assert_close(out["reward"].sum(-1), out["reward-end"].sum(-1))  # same total, other tokens


def test_config_json_has_no_private_fields(tiny_dir, data_dir, tmp_path):
    cfg = rl_config(tiny_dir, data_dir, tmp_path, preset="ppo-max")
    from rlhfkit.config import to_dict

    assert "_given" not in json.dumps(to_dict(cfg))
