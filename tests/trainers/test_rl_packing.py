"""Padding-free forwards and token-budget micro-batches in the RL step.

Mutations that make these tests fail (each tried):
- `micro_batches` ignoring the budget (one micro-batch of the whole minibatch) or dropping a row.
- `Models.set_padding_free` not called by `train_rl` (no packed forward in a run).
- `Models.set_padding_free` passing on=True whatever the config (`padding_free: false` packs).
- `enable_padding_free` skipping the critic (no packed value forward).
- the config check of micro_batch_tokens < 0 removed.
- `balance_rows` giving every row to the rank with the most tokens (or to rank 0); `Shard.mine`
  ignoring `tokens`.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.rollout import Experience
from rlhfkit.trainers.rl_update import micro_batches
from tests.trainers.test_rl_smoke import final_params, relative_gap, rl_config


def _experience(prompt_lens, response_lens, P=6, R=8) -> Experience:
    pm = torch.tensor([[0] * (P - p) + [1] * p for p in prompt_lens])
    rm = torch.tensor([[1.0] * r + [0.0] * (R - r) for r in response_lens])
    am = torch.cat([pm, rm.long()], dim=1)
    ids = torch.arange(am.numel()).view(am.shape) % 7 + 3
    return Experience(prompt_ids=ids[:, :P], prompt_mask=pm, response_ids=ids[:, P:], response_mask=rm,
                      input_ids=ids, attention_mask=am, position_ids=(am.cumsum(-1) - 1).clamp(min=0),
                      eos=torch.ones(len(prompt_lens), dtype=torch.bool))


def test_micro_batches_fit_the_token_budget():
    exp = _experience([2, 6, 3, 1, 4, 5], [8, 7, 1, 2, 3, 8])  # valid tokens 10, 13, 4, 3, 7, 13
    parts = micro_batches(exp, rows=2, tokens=12)
    lengths = exp.attention_mask.sum(-1)
    rows = sorted(i for p in parts for i in p.tolist())
    assert rows == list(range(6))  # every row once
    for p in parts:
        assert len(p) == 1 or int(lengths[p].sum()) <= 12  # a 13-token row alone, the others within budget
    # first fit, longest first: 13 | 13 | 10 (room 2) | 7 + 4 (room 1) | 3 (fits nowhere)
    assert [p.tolist() for p in parts] == [[1], [5], [0], [2, 4], [3]]
    assert [p.tolist() for p in micro_batches(exp, rows=4)] == [[0, 1, 2, 3], [4, 5]]  # tokens 0: rows as before


def test_ranks_share_a_minibatch_by_tokens():
    from rlhfkit.trainers.distributed import World, balance_rows
    from rlhfkit.trainers.rl_update import Shard

    rows = torch.tensor([7, 2, 5, 0, 3])
    tokens = torch.tensor([10, 40, 15, 5, 30])
    # longest first to the lightest rank: 40 -> r0, 30 -> r1, 15 -> r1 (45), 10 -> r0 (50), 5 -> r1 (50)
    parts = balance_rows(rows, tokens, 2)
    assert [p.tolist() for p in parts] == [[7, 2], [5, 0, 3]]
    assert [int(tokens[torch.isin(rows, p)].sum()) for p in parts] == [50, 50]
    everything = torch.zeros(8, dtype=torch.long)
    everything[rows] = tokens
    shard = Shard(0, torch.ones(8, 4), World(rank=1, size=2), tokens=everything)
    assert shard.mine(rows, 8).tolist() == [5, 0, 3]
    by_count = Shard(4, torch.ones(8, 4), World(rank=1, size=2))  # without tokens: the rows it holds, 4..7
    assert by_count.mine(rows, 4).tolist() == [3, 1]


def _count_packs(monkeypatch):
    import rlhfkit.models.forward as forward
    import rlhfkit.models.scalar_head as scalar_head

    calls = {"policy": 0, "scalar": 0}

    def counting(module, key):
        real = module.pack

        def pack(*args, **kwargs):
            calls[key] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(module, "pack", pack)

    counting(forward, "policy")
    counting(scalar_head, "scalar")
    return calls


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_padding_free_step_equals_the_padded_step(algo, tiny_dir, data_dir, tmp_path, monkeypatch):
    from rlhfkit.trainers.rl import train_rl

    kw = dict(algo=algo, steps=1, prompts_per_step=2, max_grad_norm=0.0, entropy_coef=0.01, kl_coef=0.05,
              micro_batch_size=2)
    calls = _count_packs(monkeypatch)
    padded = train_rl(rl_config(tiny_dir, data_dir, tmp_path / "padded", padding_free=False, **kw))
    assert calls == {"policy": 0, "scalar": 0}  # off: the padded path, nothing packed
    packed = train_rl(rl_config(tiny_dir, data_dir, tmp_path / "packed", **kw))
    assert calls["policy"] > 0 and (calls["scalar"] > 0) == (algo == "ppo")  # policy, reference, critic packed
    for key, value in padded.items():
        if isinstance(value, float) and not key.startswith("time/") and math.isfinite(value):
            assert packed[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    start = final_params(tiny_dir)
    a, b = final_params(padded["final"]), final_params(packed["final"])
    assert relative_gap(a - start, b - start) < 1e-4


def test_config_checks_the_new_fields(tiny_dir, data_dir, tmp_path):
    with pytest.raises(ConfigError, match="micro_batch_tokens must be >= 0"):
        rl_config(tiny_dir, data_dir, tmp_path, micro_batch_tokens=-1)
    with pytest.raises(ConfigError, match="not both"):
        rl_config(tiny_dir, data_dir, tmp_path, micro_batch_tokens=64, micro_batch_size=2)
    from rlhfkit.cli import build_parser
    from rlhfkit.config import config_from_args
    from rlhfkit.trainers.rl_config import RLConfig

    args = build_parser("rl").parse_args(["rl", "--policy", tiny_dir, "--prompts", "p.jsonl", "--output", "o",
                                          "--reward-fn", "exact_match", "--padding-free", "false",
                                          "--micro-batch-tokens", "256"])
    cfg = config_from_args(RLConfig, args)
    assert cfg.padding_free is False and cfg.micro_batch_tokens == 256
    assert rl_config(tiny_dir, data_dir, tmp_path).padding_free is True  # on by default
