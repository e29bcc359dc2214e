"""A shortened quickstart end to end: summary.json has every stage and eval number, the report is self-contained.
docs/quickstart.md: its links resolve and its `rlhfkit quickstart ...` commands build valid configs."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"


def test_fast_quickstart_end_to_end(tmp_path):
    from rlhfkit.quickstart import QuickstartConfig, run_quickstart

    import torch

    out = tmp_path / "qs"
    threads_before = torch.get_num_threads()
    torch.set_num_threads(3)  # a count the run does not use, so putting it back is visible
    try:
        run_quickstart(QuickstartConfig(task="reviews", fast=True, output=str(out), threads=1))
        assert torch.get_num_threads() == 3  # the caller's thread count is put back
    finally:
        torch.set_num_threads(threads_before)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["threads"] == 1 and summary["environment"]["torch"] == torch.__version__
    assert set(summary["stages"]) == {"sft", "rm", "rl"}
    # the held-out probe kept its best policy, and the quickstart evaluated it beside the last one
    assert summary["best"]["step"] in (0, 1, 2, 3) and summary["best"]["criterion"] == "probe/gold_mean"
    assert {"gold_mean", "score_mean"} <= set(summary["eval"]["rl_best"])
    assert "RL (best probe)" in (out / "report.html").read_text()
    for stage in summary["stages"].values():
        assert (tmp_path / "qs" / stage["output"].split("qs/")[-1]).is_dir()
    for policy in ("sft", "rl"):
        m = summary["eval"][policy]
        assert {"gold_mean", "gold_se", "score_mean", "kl_to_ref", "ppl", "length_mean", "samples"} <= set(m)
        assert m["samples"] and {"prompt", "response", "score", "gold"} <= set(m["samples"][0])
        # gold is in [-1, 1], so std <= 1 and se <= 1 / sqrt(n - 1); differing sample golds make it > 0
        assert 0.0 <= m["gold_se"] <= 1.0 / math.sqrt(m["n"] - 1) + 1e-9
        if len({s["gold"] for s in m["samples"]}) > 1:
            assert m["gold_se"] > 0.0
    assert abs(summary["eval"]["sft"]["kl_to_ref"]) < 1e-5  # the SFT policy is the reference
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and 'src="http' not in html
    assert "Before and after RL" in html


def test_standard_error_by_hand():
    from rlhfkit.quickstart import _standard_error

    # values 0, 1, 1, 0: mean 0.5, sample variance 1/3, se = sqrt(1/3 / 4)
    assert math.isclose(_standard_error([0.0, 1.0, 1.0, 0.0]), math.sqrt(1 / 12))
    assert _standard_error([0.7]) == 0.0 and math.isclose(_standard_error([0.2, 0.2, 0.2]), 0.0, abs_tol=1e-12)


def quickstart_commands(text: str) -> list[list[str]]:
    """argv of every `rlhfkit quickstart ...` line in the page's bash blocks."""
    from tests.test_docs import code_blocks

    out = []
    for block in code_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:2] == ["rlhfkit", "quickstart"]:
                out.append(argv[1:])
    return out


def invalid_quickstart_commands(text: str) -> list[str]:
    from rlhfkit.cli import build_parser
    from rlhfkit.config import ConfigError, config_from_args
    from rlhfkit.quickstart import QuickstartConfig

    bad = []
    for argv in quickstart_commands(text):
        try:
            config_from_args(QuickstartConfig, build_parser("quickstart").parse_args(argv))
        except (SystemExit, ConfigError) as err:
            bad.append(f"rlhfkit {' '.join(argv)}: {err}")
    return bad


def test_quickstart_page_commands_and_links():
    from tests.test_docs import broken_links

    text = DOC.read_text()
    assert len(quickstart_commands(text)) >= 3
    assert invalid_quickstart_commands(text) == []
    assert broken_links(text, DOC.parent) == []
    # the checker can fail: an unknown task and an unknown flag are both caught
    bad = "```bash\nrlhfkit quickstart --task chess\nrlhfkit quickstart --kl-coeff 0\n```\n"
    assert len(invalid_quickstart_commands(bad)) == 2


def test_threads_must_be_zero_or_more():
    import pytest

    from rlhfkit.config import ConfigError
    from rlhfkit.quickstart import QuickstartConfig

    with pytest.raises(ConfigError, match="threads must be >= 1, or 0"):
        QuickstartConfig(threads=-1)
    assert QuickstartConfig(threads=0).threads == 0
