"""The HTML report is self-contained, escapes run text, pairs samples, survives missing parts."""

import json
import re

import pytest

from rlhfkit.reporting.report import build_report, build_report_from_dir

from ._fake_runs import rl_rows, write_run

EVIL = "<script>alert('x')</script> & <b>bold</b>"


def _quickstart_dir(tmp_path, with_rm=True, rl=None):
    out = tmp_path / "qs"
    sft_rows = [{"step": s, "train/loss": 3.0 / s} for s in range(1, 6)]
    sft_rows.append({"step": 5, "eval/loss": 1.1, "eval/ppl": 3.0})
    write_run(out / "sft", sft_rows)
    (out / "sft" / "config.yaml").write_text("lr: 0.001\nnote: '<i>not markup</i>'\n")
    stages = {"sft": {"output": "sft", "eval_loss": 1.1}, "rl": {"output": str(out / "rl"), "steps": 30}}
    if with_rm:
        rm_rows = [{"step": s, "train/loss": 0.7 - 0.02 * s, "train/accuracy": 0.6} for s in range(1, 6)]
        rm_rows.append({"step": 5, "eval/accuracy": 0.6875, "eval/margin_mean": 0.4, "eval/score_mean": 0.1,
                        "eval/score_std": 1.2})
        write_run(out / "rm", rm_rows)
        stages["rm"] = {"output": "rm"}
    write_run(out / "rl", rl or rl_rows(), events=[(0, "start", "ppo on cpu"), (7, "kl_high", f"kl too high {EVIL}")])
    return out, stages


def _summary(stages, sft_gold=0.41, rl_gold=0.63, sft_score=-0.2, rl_score=0.9):
    return {
        "task": "reviews", "algo": "ppo", "stages": stages,
        "eval": {
            "sft": {"gold_mean": sft_gold, "score_mean": sft_score, "kl_to_ref": 0.0, "ppl": 3.1, "length_mean": 9.5,
                    "samples": [{"prompt": "Review: the film", "response": EVIL, "score": -0.3, "gold": 0.2},
                                {"prompt": "Review: only sft", "response": "meh", "score": 0.0, "gold": 0.1}]},
            "rl": {"gold_mean": rl_gold, "score_mean": rl_score, "kl_to_ref": 4.2, "ppl": 5.0, "length_mean": 11.0,
                   "samples": [{"prompt": "Review: the film", "response": "a great film", "score": 1.4,
                                "gold": 0.8}]},
        },
    }


def _assert_self_contained(page):
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), refs
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    out, stages = _quickstart_dir(tmp_path_factory.mktemp("full"))
    return out, build_report(None, _summary(stages), out / "report.html").read_text()


def test_full_report_is_self_contained_and_escaped(full_report):
    out, page = full_report
    _assert_self_contained(page)
    assert page.count("data:image/png;base64,") >= 8  # RL curves plus SFT and RM figures
    assert (out / "plots" / "rl_score.png").exists() and (out / "plots" / "rm_accuracy.png").exists()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "<b>bold</b>" not in page and "&lt;i&gt;not markup&lt;/i&gt;" in page
    assert "0.6875" in page and "kl_high" in page and "<details>" in page
    assert "1 health warning(s)" in page and "Run events (1)" in page  # "start" is not a warning
    assert "+0.22" in page  # gold change 0.41 -> 0.63
    assert "Possible reward hacking" not in page


def test_samples_for_the_same_prompt_share_a_row(full_report):
    _, page = full_report
    table_rows = [chunk.split("</tr>")[0] for chunk in page.split("<tr>")[1:]]
    rows = [r for r in table_rows if "Review: the film" in r]
    assert len(rows) == 1 and "a great film" in rows[0] and "&lt;script&gt;" in rows[0]
    only_sft = [r for r in table_rows if "Review: only sft" in r][0]
    assert "no sample for this prompt" in only_sft


def test_score_up_gold_down_is_flagged(tmp_path):
    page = build_report(None, _summary({}, rl_gold=0.2), tmp_path / "report.html").read_text()
    assert "Possible reward hacking" in page
    page = build_report(None, _summary({}, rl_gold=0.2, rl_score=-0.5), tmp_path / "report.html").read_text()
    assert "Possible reward hacking" not in page


def test_missing_rm_stage_and_rl_eval_are_handled(tmp_path):
    accuracy_rows = [{"step": s, "reward/score_mean": s / 10} for s in range(1, 11)]
    out, stages = _quickstart_dir(tmp_path, with_rm=False, rl=accuracy_rows)
    summary = {"task": "arithmetic", "algo": "grpo", "stages": stages,
               "eval": {"sft": {"accuracy": 0.25, "samples": []}}}
    (out / "summary.json").write_text(json.dumps(summary))
    page = build_report_from_dir(out).read_text()
    run_dirs = {"sft": out / "sft", "rm": out / "rm", "rl": out / "rl"}  # rm/ does not exist
    assert build_report(run_dirs, summary, out / "r2.html").read_text() == page
    _assert_self_contained(page)
    assert "No reward model was trained" in page and "0.25" in page
    assert "No sample responses" in page and "Gold reward" not in page
    assert page.count("data:image/png;base64,") == 3  # rl score curve, sft loss and ppl


def test_empty_summary_and_missing_folders_still_give_a_page(tmp_path):
    summary = {"stages": {"rl": {"output": str(tmp_path / "never_ran")}}}
    page = build_report({}, summary, tmp_path / "report.html").read_text()
    assert "No evaluation numbers" in page and "No RL metrics were found" in page
    assert "data:image/png" not in page


def test_gold_change_is_judged_against_its_standard_error(tmp_path):
    # gold 0.41 -> 0.63: with se 0.03 each, z = 0.22 / hypot(0.03, 0.03) = 5.2; with se 0.1 each, z = 1.6
    summary = _summary({})
    for policy in ("sft", "rl"):
        summary["eval"][policy]["gold_se"] = 0.03
    summary["eval"]["sft"]["kl_to_ref"] = -1.9e-7  # the reference against itself: float noise
    page = build_report(None, summary, tmp_path / "a.html").read_text()
    assert "a change of 5.2 standard errors, well outside the noise" in page
    assert '<td class="num">-1.9e-07</td>' not in page and '<td class="num">0</td>' in page
    for policy in ("sft", "rl"):
        summary["eval"][policy]["gold_se"] = 0.1
    page = build_report(None, summary, tmp_path / "b.html").read_text()
    assert "a change of 1.6 standard errors, within the noise" in page
    assert '<div class="warn">RL raised' in page  # not shown as a success
