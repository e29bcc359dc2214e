"""Judges against a real OpenAI-compatible server on 127.0.0.1: position bias, normal, slow, garbage."""

from __future__ import annotations

import pytest

from rlhfkit.judging import (RUBRICS, HTTPJudge, JudgeError, judge_both_orders, load_template, parse_verdict,
                             render_template)
from rlhfkit.winrate import wilson_interval, win_summary
from tests.openai_server import TEMPLATE, judge_server

PROMPTS = ["p1", "p2", "p3", "p4"]
POLICY = ["good good", "good", "bad", "good"]
COMPARE = ["bad", "bad", "good", "good"]  # the policy should win, win, lose, tie


def judge(srv, **kw):
    return HTTPJudge(srv.url, "judge-model", **{"timeout": 5.0, "retries": 0, "backoff": 0.0, **kw})


def test_wilson_interval_hand_checked():
    # 8 of 10: the textbook Wilson 95% interval is (0.4902, 0.9433).
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    s = win_summary(2, 1, 1)
    assert s["win_rate"] == 0.625 and s["tie_rate"] == 0.25 and (s["ci_low"], s["ci_high"]) == wilson_interval(2.5, 4)


def test_parse_verdict():
    assert parse_verdict("A is long. Verdict: B") == "B"
    assert parse_verdict("verdict: a ... final Verdict: **tie**") == "tie"
    assert parse_verdict(" [[A]] ") == "A"
    assert parse_verdict("Both are fine") is None and parse_verdict("") is None and parse_verdict(None) is None


def test_templates():
    for text in RUBRICS.values():
        assert all(p in text for p in ("{prompt}", "{response_a}", "{response_b}"))
    out = render_template("{prompt}|{response_a}|{response_b}", "q", "x {response_b}", "y")
    assert out == "q|x {response_b}|y"  # a response's own braces are not replaced


def test_template_file_missing_a_placeholder_is_named(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Q: {prompt} A: {response_a}")
    with pytest.raises(Exception, match=r"t.txt: missing placeholder\(s\) \{response_b\}"):
        load_template(str(path))


def test_judge_that_always_prefers_position_a():
    with judge_server("first") as srv:
        out = judge_both_orders(judge(srv), TEMPLATE, PROMPTS, POLICY, COMPARE)
        assert srv.requests == 8  # every pair in both orders, once
    assert out["position_consistency"] == 0.0 and out["win_rate"] == 0.5 and out["tie_rate"] == 1.0
    assert out["first_position_rate"] == 1.0 and out["unparsed"] == 0


def test_normal_judge_both_orders_agree():
    with judge_server("normal") as srv:
        out = judge_both_orders(judge(srv, concurrency=3), TEMPLATE, PROMPTS, POLICY, COMPARE)
    assert (out["wins"], out["ties"], out["losses"]) == (2, 1, 1)
    assert out["win_rate"] == 0.625 and out["position_consistency"] == 1.0
    assert (out["ci_low"], out["ci_high"]) == wilson_interval(2.5, 4)
    assert [v["outcome"] for v in out["verdicts"]] == ["win", "win", "loss", "tie"]


def test_garbage_answers_count_as_ties():
    with judge_server("garbage") as srv:
        out = judge_both_orders(judge(srv), TEMPLATE, PROMPTS, POLICY, COMPARE)
    assert out["unparsed"] == 8 and out["tie_rate"] == 1.0 and out["win_rate"] == 0.5
    assert out["first_position_rate"] is None


def test_slow_judge_times_out_with_a_clear_error():
    with judge_server("slow") as srv:
        with pytest.raises(JudgeError, match=r"judge endpoint http://127\.0\.0\.1:\d+/v1/chat/completions: no "
                                             r"answer within the 0\.2 s timeout.*2 attempt"):
            judge_both_orders(judge(srv, timeout=0.2, retries=1, concurrency=1), TEMPLATE, PROMPTS[:1],
                              POLICY[:1], COMPARE[:1])
        assert srv.requests <= 4  # bounded: at most (retries + 1) per request


def test_retries_recover_from_server_errors():
    with judge_server("flaky") as srv:
        out = judge_both_orders(judge(srv, retries=2, concurrency=1), TEMPLATE, PROMPTS, POLICY, COMPARE)
        assert srv.requests == 16  # every request failed once (503) and succeeded on its retry
    assert out["win_rate"] == 0.625


def test_out_of_protocol_answer_and_unreachable_endpoint_are_named():
    with judge_server("broken") as srv:
        with pytest.raises(JudgeError, match="not a chat completion"):
            judge_both_orders(judge(srv), TEMPLATE, PROMPTS[:1], POLICY[:1], COMPARE[:1])
        url = srv.url
    with pytest.raises(JudgeError, match=r"127\.0\.0\.1.*cannot connect"):
        judge_both_orders(HTTPJudge(url, "m", retries=0, timeout=2.0), TEMPLATE, ["p"], ["a"], ["b"])
