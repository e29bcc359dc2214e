"""Every stage through the CLI on each family's saved folder: sft -> rm -> rl (ppo, grpo) -> eval.

Tiny models (one layer, hidden 16) and a few rows: a smoke run per family that asserts each stage
exits 0 and writes its folder. The invariances themselves are in tests/models/test_families.py.
"""

import json

import pytest

from rlhfkit.models import load_tokenizer
from rlhfkit.models.families import FAMILIES, save_family
from rlhfkit.rollout import load_reward_scorer

WORDS = ["movie", "phone", "cat", "dog"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("family_data")
    return {
        "sft": _jsonl(d / "sft.jsonl", [{"prompt": f"review : {w}", "response": f"the {w} is good"} for w in WORDS]),
        "prefs": _jsonl(d / "prefs.jsonl", [{"prompt": f"review : {w}", "chosen": f"the {w} is good",
                                             "rejected": f"the {w} is bad"} for w in WORDS]),
        "prompts": _jsonl(d / "prompts.jsonl", [{"prompt": f"review : {w}"} for w in WORDS]
                          + [{"prompt": [{"role": "user", "content": "say hi"}]}]),
    }


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_cli_pipeline_on_each_family(name, data, tmp_path):
    from rlhfkit.cli import main

    base = save_family(name, tmp_path / "base")
    cpu = ["--device", "cpu"]
    assert main(["sft", "--model", base, "--data", data["sft"], "--output", str(tmp_path / "sft"), "--epochs", "1",
                 "--batch-size", "4", *cpu]) == 0
    sft = str(tmp_path / "sft" / "final")
    assert main(["rm", "--model", sft, "--data", data["prefs"], "--output", str(tmp_path / "rm"), "--epochs", "1",
                 "--batch-size", "4", *cpu]) == 0
    rm = str(tmp_path / "rm" / "final")
    # the reward model `rlhfkit rm` saved reads the policy's ids as they are (same tokenizer, pad aside)
    assert load_reward_scorer(rm, load_tokenizer(sft)).reuse_ids
    for algo in ("ppo", "grpo"):
        assert main(["rl", "--algo", algo, "--policy", sft, "--reward-model", rm, "--prompts", data["prompts"],
                     "--output", str(tmp_path / algo), "--steps", "2", "--prompts-per-step", "2",
                     "--max-new-tokens", "4", *cpu]) == 0
        assert (tmp_path / algo / "final" / "config.json").is_file()
    assert main(["eval", "--policy", str(tmp_path / "grpo" / "final"), "--reference", sft, "--reward-model", rm,
                 "--prompts", data["prompts"], "--output", str(tmp_path / "eval"), "--num-prompts", "3",
                 "--max-new-tokens", "4", *cpu]) == 0
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["policy"]["n"] == 3
