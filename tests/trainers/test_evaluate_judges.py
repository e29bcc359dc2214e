"""`rlhfkit eval` with a judge endpoint on 127.0.0.1 and the blind human-review round trip."""

from __future__ import annotations

import csv
import json

import pytest

from tests.openai_server import TEMPLATE, judge_server


def eval_args(tiny_dir, data_dir, out, *extra):
    return ["eval", "--policy", tiny_dir, "--compare", tiny_dir, "--prompts", str(data_dir / "prompts.jsonl"),
            "--output", str(out), "--num-prompts", "4", "--max-new-tokens", "4", "--device", "cpu", *extra]


def test_eval_with_a_position_biased_endpoint_judge(tiny_dir, data_dir, tmp_path, monkeypatch, capsys):
    from rlhfkit.cli import main

    template = tmp_path / "judge.txt"
    template.write_text(TEMPLATE)
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-secret-4711")
    out = tmp_path / "eval"
    with judge_server("first") as srv:
        code = main(eval_args(tiny_dir, data_dir, out, "--judge-url", srv.url, "--judge-model", "m",
                              "--judge-template", str(template), "--judge-api-key-env", "TEST_JUDGE_KEY",
                              "--judge-backoff", "0"))
        assert code == 0
        assert srv.requests == 8 and set(srv.auth) == {"Bearer sk-secret-4711"}
    w = json.loads((out / "eval.json").read_text())["win_rate"]
    assert w["position_consistency"] == 0.0 and w["win_rate"] == 0.5 and w["tie_rate"] == 1.0 and w["n"] == 4
    assert 0.0 < w["ci_low"] < 0.5 < w["ci_high"] < 1.0
    report = (out / "report.html").read_text()
    assert "position consistency" in report and "Wilson" in report
    printed = capsys.readouterr().out
    assert "position consistency 0.000" in printed
    for text in (printed, report, (out / "eval.json").read_text(), (out / "eval_config.yaml").read_text()):
        assert "sk-secret-4711" not in text  # the key is never logged or saved
    assert "TEST_JUDGE_KEY" in (out / "eval_config.yaml").read_text()


def test_eval_with_a_slow_endpoint_fails_in_one_clear_line(tiny_dir, data_dir, tmp_path, capsys):
    from rlhfkit.cli import main

    with judge_server("slow") as srv:
        code = main(eval_args(tiny_dir, data_dir, tmp_path / "eval", "--judge-url", srv.url, "--judge-model", "m",
                              "--judge-timeout", "0.2", "--judge-retries", "1", "--judge-backoff", "0",
                              "--judge-concurrency", "2"))
        assert srv.requests <= 16  # bounded: 8 requests, each at most retries + 1 times
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("rlhfkit eval: ") and f"judge endpoint {srv.url}/chat/completions: no answer within the 0.2 s timeout" in last


def test_missing_api_key_variable_is_named(tiny_dir, data_dir, tmp_path, monkeypatch, capsys):
    from rlhfkit.cli import main

    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    code = main(eval_args(tiny_dir, data_dir, tmp_path / "eval", "--judge-url", "http://127.0.0.1:9/v1",
                          "--judge-model", "m", "--judge-api-key-env", "NO_SUCH_KEY_VAR"))
    assert code == 2 and "NO_SUCH_KEY_VAR" in capsys.readouterr().err


def test_review_export_import_round_trip(tiny_dir, data_dir, tmp_path, capsys):
    from rlhfkit.cli import main
    from rlhfkit.winrate import wilson_interval

    out, sheet = tmp_path / "eval", tmp_path / "review.csv"
    assert main(eval_args(tiny_dir, data_dir, out, "--num-prompts", "6", "--export-review", str(sheet))) == 0
    key = json.loads((tmp_path / "review.key.json").read_text())["policy_column"]
    assert set(key.values()) == {1, 2}  # the policy's side is drawn per row
    with sheet.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [str(i) for i in range(6)] and all(r["verdict"] == "" for r in rows)
    assert set(rows[0]) == {"id", "prompt", "response_1", "response_2", "verdict"}  # nothing names the policies
    # The reviewer: the policy wins rows 0-2, row 3 is a tie, compare wins row 4, row 5 is left empty.
    for r in rows:
        i, policy_col = int(r["id"]), key[r["id"]]
        r["verdict"] = {0: policy_col, 1: policy_col, 2: policy_col, 3: "tie", 4: 3 - policy_col, 5: ""}[i]
    with sheet.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    assert main(["eval", "--output", str(out), "--import-review", str(sheet),
                 "--key", str(tmp_path / "review.key.json")]) == 0
    result = json.loads((out / "eval.json").read_text())
    h = result["human_review"]
    assert (h["wins"], h["ties"], h["losses"], h["unfilled"]) == (3, 1, 1, 1)
    assert h["win_rate"] == pytest.approx(3.5 / 5) and (h["ci_low"], h["ci_high"]) == wilson_interval(3.5, 5)
    assert "policy" in result  # the same eval.json as the generation run
    assert "Human review" in (out / "report.html").read_text()


def test_review_sheet_errors_name_line_and_field(tmp_path):
    from rlhfkit.data import DataError
    from rlhfkit.review import export_review, import_review

    sheet, key = tmp_path / "r.csv", tmp_path / "r.key.json"
    export_review(sheet, key, ["p1", "p2"], ["a", "b"], ["c", "d"], seed=3)
    text = sheet.read_text().splitlines()
    text[2] += "3"  # row id 1 (line 3): verdict "3"
    sheet.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"r.csv, line 3: field 'verdict': expected 1, 2 or tie"):
        import_review(sheet, key)


def test_every_eval_field_is_documented():
    import dataclasses
    from pathlib import Path

    from rlhfkit.evaluate import EvalConfig

    text = (Path(__file__).resolve().parents[2] / "docs" / "evaluation.md").read_text()
    assert [f.name for f in dataclasses.fields(EvalConfig) if f"`{f.name}`" not in text] == []


def test_local_judge_uses_the_chat_template_and_runs_from_the_cli(tiny_dir, data_dir, tmp_path):
    from rlhfkit.cli import main
    from rlhfkit.judging import LocalJudge
    from rlhfkit.models import load_tokenizer

    tok = load_tokenizer(tiny_dir)
    assert LocalJudge(None, tok).render("Q") == "QVerdict:"  # no chat template: the text as is
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    assert LocalJudge(None, tok).render("Q") == "<user>Q<assistant>Verdict:"
    out = tmp_path / "eval"
    assert main(eval_args(tiny_dir, data_dir, out, "--judge", tiny_dir)) == 0
    w = json.loads((out / "eval.json").read_text())["win_rate"]
    # Same model and seed: identical responses, so any verdict is about position and the pairs tie.
    assert w["ties"] == w["n"] == 4 and w["win_rate"] == 0.5 and w["judge"] == tiny_dir
