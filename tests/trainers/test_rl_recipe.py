"""The RL recipe's options do what the docs say, seen only through the public API.

`RLConfig` / `train_rl` and the files a run writes (metrics.jsonl, final/): no private helper of
the loop is called, so these tests hold across refactors of its internals. Each compares two
runs that differ in one option; at step 1 both have sampled the same responses (same seed, and
the policy has not moved yet), so the step-1 numbers can be computed by hand.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.trainers.test_rl_smoke import rl_config


def run(tiny_dir, data_dir, out, **kw) -> tuple[dict, list[dict]]:
    """train_rl with the smoke-test defaults; returns (result, metric rows by step)."""
    from rlhfkit.trainers.rl import train_rl

    result = train_rl(rl_config(tiny_dir, data_dir, out, **kw))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return result, [r for r in rows if "event" not in r and r["step"] > 0]  # step 0: the start's probe


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def reward_file(tmp_path, body: str) -> str:
    path = tmp_path / "rewards.py"
    path.write_text(body)
    return f"{path}:score"


# ---------------------------------------------------------------- critic warm-up (PPO-max)

def test_critic_warmup_trains_only_the_critic(tiny_dir, data_dir, tmp_path):
    from rlhfkit.models import load_causal_lm, load_critic, load_scalar_model

    # One pass per batch, so one policy optimizer step per RL step (PPO's default takes 2).
    kw = dict(algo="ppo", steps=2, warmup_steps=4, lr=1e-3, ppo_epochs=1)
    warm, warm_rows = run(tiny_dir, data_dir, tmp_path / "warm", critic_warmup_steps=2, **kw)
    plain, plain_rows = run(tiny_dir, data_dir, tmp_path / "plain", critic_warmup_steps=0, **kw)
    start = flat(load_causal_lm(tiny_dir))
    # The policy is exactly where it started; the critic moved (from its zero-initialized head).
    assert torch.equal(flat(load_causal_lm(warm["final"])), start)
    critic_start = flat(load_critic(tiny_dir))
    assert not torch.equal(flat(load_scalar_model(tmp_path / "warm" / "final" / "critic")), critic_start)
    assert all("loss/value" in r and "grad/critic_norm" in r for r in warm_rows)
    assert not any("grad/norm" in r or "loss/policy" in r for r in warm_rows)
    # The policy's schedule waits too: lr warm-up (lr * (k+1)/4 after k policy steps) has not begun.
    assert [r["lr"] for r in warm_rows] == pytest.approx([1e-3 / 4, 1e-3 / 4], rel=1e-6)
    # Without warm-up the same run moves the policy and its schedule.
    assert not torch.equal(flat(load_causal_lm(plain["final"])), start)
    assert [r["lr"] for r in plain_rows] == pytest.approx([2e-3 / 4, 3e-3 / 4], rel=1e-6)


# ---------------------------------------------------------------- PPO-ptx (InstructGPT)

def demo_loss(model_dir, data_dir) -> float:
    """Token-mean cross-entropy of a model on the demonstrations' response tokens."""
    from rlhfkit.data import collate_sft, load_sft, tokenize_sft
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.trainers.sft import sft_token_loss

    tokenizer, model = load_tokenizer(model_dir), load_causal_lm(model_dir)
    examples, _ = tokenize_sft(load_sft(str(data_dir / "sft.jsonl")), tokenizer, 64)
    batch = collate_sft(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        loss, _ = sft_token_loss(model, batch, float(batch["loss_mask"][:, 1:].sum()))
    return float(loss)


def test_ptx_mixes_the_demonstrations_into_the_update(tiny_dir, data_dir, tmp_path):
    kw = dict(algo="ppo", steps=3, lr=1e-2, ptx_data=str(data_dir / "sft.jsonl"))
    ptx, ptx_rows = run(tiny_dir, data_dir, tmp_path / "ptx", ptx_coef=10.0, **kw)
    rl, rl_rows = run(tiny_dir, data_dir, tmp_path / "rl", ptx_coef=0.0, **kw)
    assert all(r["loss/sft"] > 0 and math.isfinite(r["loss/sft"]) for r in ptx_rows)
    assert not any("loss/sft" in r for r in rl_rows)
    # The logged term is the demonstrations' loss of the policy being updated: at step 1 (before
    # any update) it is close to the starting model's loss on them.
    start = demo_loss(tiny_dir, data_dir)
    assert ptx_rows[0]["loss/sft"] == pytest.approx(start, rel=0.1)
    # With a large coefficient the SFT gradient dominates: the demonstrations' loss falls clearly,
    # well below where RL alone takes it.
    after_ptx, after_rl = demo_loss(ptx["final"], data_dir), demo_loss(rl["final"], data_dir)
    assert after_ptx < start - 0.1
    assert after_ptx < after_rl - 0.1


# ---------------------------------------------------------------- reward normalization and clip

OUTLIER = "def score(prompts, responses, **fields):\n    return [100.0] + [0.0] * (len(responses) - 1)\n"


@pytest.mark.parametrize("clip", [None, 1.0])
def test_reward_clip_bounds_the_normalized_scores(clip, tiny_dir, data_dir, tmp_path):
    # Step 1, by hand: scores (100, 0, 0, 0); normalized by their own mean 25 and population std
    # 25 sqrt(3): (sqrt(3), -1/sqrt(3) x 3), mean 0. One token per response, no KL, gamma 1: every
    # return is its response's (clipped) normalized score. reward/normalized_mean is logged before
    # the clip; returns/mean after it.
    _, rows = run(tiny_dir, data_dir, tmp_path / "run", algo="reinforce", steps=1, prompts_per_step=4,
                  max_new_tokens=1, kl_coef=0.0, normalize_rewards=True, reward_clip=clip,
                  reward_fn=reward_file(tmp_path, OUTLIER))
    row = rows[0]
    assert row["response/length_mean"] == 1.0
    assert row["reward/score_max"] == 100.0
    assert row["reward/normalized_mean"] == pytest.approx(0.0, abs=1e-6)
    top = math.sqrt(3) if clip is None else clip
    assert row["returns/mean"] == pytest.approx((top - 3 / math.sqrt(3)) / 4, abs=1e-5)


def test_reward_clip_without_normalization_clips_the_raw_scores(tiny_dir, data_dir, tmp_path):
    every = "def score(prompts, responses, **fields):\n    return [100.0] * len(responses)\n"
    kw = dict(algo="reinforce", steps=1, max_new_tokens=3, kl_coef=0.0, reward_fn=reward_file(tmp_path, every))
    _, clipped = run(tiny_dir, data_dir, tmp_path / "clip", reward_clip=5.0, **kw)
    _, raw = run(tiny_dir, data_dir, tmp_path / "raw", **kw)
    assert clipped[0]["returns/mean"] == pytest.approx(5.0)
    assert raw[0]["returns/mean"] == pytest.approx(100.0)


# ---------------------------------------------------------------- advantage whitening

def test_reinforce_pp_whitening_is_the_loops_and_the_flag_turns_it_off(tiny_dir, data_dir, tmp_path):
    distinct = f"{data_dir / 'reward.py'}:distinct"  # never equal for every response
    kw = dict(algo="reinforce++", steps=1, prompts_per_step=4, max_new_tokens=3, kl_coef=0.0, reward_fn=distinct)
    _, on = run(tiny_dir, data_dir, tmp_path / "on", **kw)
    _, off = run(tiny_dir, data_dir, tmp_path / "off", whiten_advantages=False, **kw)
    assert on[0]["reward/score_std"] > 0.01  # a signal to whiten (same samples in both runs)
    assert on[0]["advantages/mean"] == pytest.approx(0.0, abs=1e-5)
    assert on[0]["advantages/std"] == pytest.approx(1.0, rel=1e-4)
    # Unwhitened, no KL, gamma 1: every token's advantage is its return-to-go, the response's score.
    assert off[0]["advantages/mean"] == pytest.approx(off[0]["returns/mean"], rel=1e-6)
    assert off[0]["advantages/mean"] == pytest.approx(on[0]["reward/score_mean"], rel=0.5)
    assert off[0]["advantages/std"] < 0.5  # the scores' own spread, not whitened to 1


# ---------------------------------------------------------------- where the KL goes

def test_grpo_kl_in_the_reward_uses_k1(tiny_dir, data_dir, tmp_path):
    # Step 1: policy = reference, every estimator is 0 and the three runs take the same step.
    # Step 2: the same samples, shaped with -beta KL_t per token: the default equals k1, not k3.
    kw = dict(algo="grpo", steps=2, lr=1e-2, kl_coef=1.0, kl_placement="reward", max_new_tokens=4,
              reward_fn=f"{data_dir / 'reward.py'}:distinct")
    rows = {est: run(tiny_dir, data_dir, tmp_path / str(est), kl_estimator=est, **kw)[1]
            for est in (None, "k1", "k3")}
    # (At step 1 the rollout's and the reference's logprobs differ by float noise, ~1e-7.)
    assert rows[None][0]["returns/mean"] == pytest.approx(rows["k3"][0]["returns/mean"], abs=1e-5)
    assert rows[None][1]["kl/mean"] > 1e-2  # the policy has moved: k1 and k3 differ by ~kl
    gap = abs(rows["k1"][1]["returns/mean"] - rows["k3"][1]["returns/mean"])
    assert gap > 1e-3  # measured 6e-3
    assert rows[None][1]["returns/mean"] == pytest.approx(rows["k1"][1]["returns/mean"], abs=gap / 100)


def test_prime_kl_coef_changes_the_update_in_the_default_placement(tiny_dir, data_dir, tmp_path):
    # PRIME's outcome term is the KL-shaped return s_i - beta sum_t k1_t (docs/rl/prime.md).
    kw = dict(algo="prime", steps=2, lr=1e-2, max_new_tokens=4)
    with_kl = run(tiny_dir, data_dir, tmp_path / "kl", kl_coef=1.0, **kw)[1]
    without = run(tiny_dir, data_dir, tmp_path / "nokl", kl_coef=0.0, **kw)[1]
    # Step 1: policy = reference, the KL is float noise (~1e-7): the same advantages.
    assert with_kl[0]["advantages/std"] == pytest.approx(without[0]["advantages/std"], rel=1e-4)
    # Step 2: the same samples, now 0.25 nats from the reference: beta = 1 changes the advantages
    # (measured std 0.46 against 0.27).
    assert with_kl[1]["kl/mean"] == pytest.approx(without[1]["kl/mean"], rel=1e-4)
    assert with_kl[1]["kl/mean"] > 0.05
    assert with_kl[1]["advantages/std"] != pytest.approx(without[1]["advantages/std"], rel=0.1)
