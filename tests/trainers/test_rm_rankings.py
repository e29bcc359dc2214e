"""`rlhfkit rm` on rankings: a ranked file trains from the CLI; per-group numbers for mixed files."""

from __future__ import annotations

import json

from tests.trainers.conftest import write_jsonl


def ranked_rows():
    return [{"prompt": f"review : {w}", "responses": [f"the {w} is bad", f"the {w} is good", f"the {w} is ok"],
             "ranking": [3, 1, 2]} for w in ("movie", "phone")] * 6


def test_ranked_file_trains_from_the_cli_and_reports_orderings(tiny_dir, tmp_path):
    from rlhfkit.cli import main

    data = write_jsonl(tmp_path / "ranked.jsonl", ranked_rows())
    out = tmp_path / "rm"
    code = main(["rm", "--model", tiny_dir, "--data", data, "--output", str(out), "--epochs", "3",
                 "--batch-size", "4", "--lr", "3e-3", "--device", "cpu", "--eval-fraction", "0.25",
                 "--max-length", "32", "--label-smoothing", "0.05", "--log-every", "1"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval/accuracy"] == 1.0 and summary["eval/ordering_accuracy"] == 1.0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"event"' not in x]
    train = [r for r in rows if "train/loss" in r]
    # Each prompt's 3 pairs start at log 2 (zero head) and count once: the first loss is log 2.
    assert abs(train[0]["train/loss"] - 0.6931) < 1e-3 and train[-1]["train/loss"] < train[0]["train/loss"]
    assert "train/ordering_accuracy" in train[-1]


def test_mixed_files_report_per_group_numbers(tiny_dir, tmp_path):
    from rlhfkit.cli import main
    from rlhfkit.reporting import undefined_metrics

    a = write_jsonl(tmp_path / "a.jsonl", ranked_rows())
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "review : the phone", "chosen": "the phone is good",
                                            "rejected": "the phone is bad", "category": "x"}] * 4)
    out = tmp_path / "rm"
    code = main(["rm", "--model", tiny_dir, "--data", f"{a}:0.5", "--data", f"{b}:0.5", "--output", str(out),
                 "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--device", "cpu", "--eval-fraction", "0.25",
                 "--max-length", "32"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    # Held out per file: round(0.25 * 12) = 3 prompts of a, 1 of b; the groups are the files.
    assert summary["eval/count/" + a] == 3 and summary["eval/count/" + b] == 1
    for key in ("accuracy", "margin_mean", "loss"):
        assert f"eval/{key}/{a}" in summary and f"eval/{key}/{b}" in summary
    # Training data: 9 + 3 = 12 prompts, mixed half and half (b up-sampled).
    assert summary["data/kept"] == 12
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"event"' not in x]
    assert undefined_metrics([k for r in rows for k in r]) == []
    assert f"eval/accuracy/{a}" in rows[-1]
    report = (out / "report.html").read_text()
    assert "Per group" in report and "b.jsonl" in report
    config = (out / "config.yaml").read_text()
    assert "a.jsonl:0.5" in config and "b.jsonl:0.5" in config


def test_group_by_a_field(tiny_dir, tmp_path):
    from rlhfkit.trainers.rm import RMConfig, train_rm

    rows = [{"prompt": f"review : {w}", "chosen": f"the {w} is good", "rejected": f"the {w} is bad",
             "category": w} for w in ("movie", "phone")] * 4
    data = write_jsonl(tmp_path / "g.jsonl", rows)
    result = train_rm(RMConfig(model=tiny_dir, data=data, output=str(tmp_path / "rm"), epochs=1, batch_size=4,
                               device="cpu", eval_fraction=0.5, max_length=32, group_by="category"))
    counts = {k: v for k, v in result.items() if k.startswith("eval/count/")}
    assert counts == {"eval/count/movie": 2, "eval/count/phone": 2}
