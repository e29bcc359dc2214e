"""`rlhfkit eval`: metrics per policy, win rate by reward and by a two-order LM judge."""

from __future__ import annotations

import json

import pytest


def test_win_rate_counts_ties_half():
    from rlhfkit.evaluate import win_rate

    out = win_rate([1.0, 0.5, 0.2, 0.9], [0.0, 0.5, 0.7, 0.1])
    assert out == {"win_rate": (2 + 0.5) / 4, "wins": 2, "ties": 1, "losses": 1}
    with pytest.raises(ValueError):
        win_rate([1.0], [])


def test_eval_cli_compares_two_policies(tiny_dir, data_dir, tmp_path):
    from rlhfkit.cli import main

    out = tmp_path / "eval"
    code = main(["eval", "--policy", tiny_dir, "--compare", tiny_dir, "--reference", tiny_dir,
                 "--prompts", str(data_dir / "prompts.jsonl"), "--reward-fn", f"{data_dir / 'reward.py'}:good_fraction",
                 "--output", str(out), "--num-prompts", "6", "--max-new-tokens", "5", "--device", "cpu"])
    assert code == 0
    result = json.loads((out / "eval.json").read_text())
    for name in ("policy", "compare"):
        m = result[name]
        assert {"score_mean", "kl_to_ref", "ppl", "length_mean", "samples"} <= set(m)
        assert abs(m["kl_to_ref"]) < 1e-5  # the policy is its own reference
        assert m["ppl"] > 1.0 and m["n"] == 6
    assert 0.0 <= result["win_rate"]["win_rate"] <= 1.0
    assert result["win_rate"]["wins"] + result["win_rate"]["ties"] + result["win_rate"]["losses"] == 6


def test_judge_sees_both_orders(tiny_dir):
    from rlhfkit.evaluate import judge_pairs
    from rlhfkit.models import load_causal_lm, load_tokenizer

    judge, tok = load_causal_lm(tiny_dir).eval(), load_tokenizer(tiny_dir)
    # Identical responses: any verdict depends only on position, so both orders agree on "A" or on
    # "B" and the pair must come out as a tie.
    verdicts = judge_pairs(judge, tok, ["review : movie"], ["the movie is good"], ["the movie is good"])
    assert verdicts == [0.5]
