"""Fixtures for trainer tests: a tiny policy folder, prompts, demonstrations, pairs, a reward file."""

from __future__ import annotations

import json

import pytest

WORDS = "good bad fine ok the movie phone is was very not".split()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from rlhfkit.models.tiny import save_tiny

    path = tmp_path_factory.mktemp("tiny") / "model"
    return save_tiny(path, [" ".join(WORDS) + " review : ?"], hidden_size=32, num_layers=1, num_heads=2)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    prompts = [{"prompt": f"review : {w}", "answer": "good"} for w in ("movie", "phone", "the movie", "the phone")]
    write_jsonl(d / "prompts.jsonl", prompts * 4)
    sft = [{"prompt": f"review : {w}", "response": f"the {w} is {a}"} for w in ("movie", "phone") for a in
           ("good", "bad", "fine", "ok")]
    write_jsonl(d / "sft.jsonl", sft * 4)
    prefs = [{"prompt": f"review : {w}", "chosen": f"the {w} is good", "rejected": f"the {w} is bad"}
             for w in ("movie", "phone")]
    write_jsonl(d / "prefs.jsonl", prefs * 8)
    # A simple task: the score is the fraction of response words equal to "good".
    (d / "reward.py").write_text(
        "def good_fraction(prompts, responses, **fields):\n"
        "    out = []\n"
        "    for r in responses:\n"
        "        words = r.split()\n"
        "        out.append(sum(w == 'good' for w in words) / max(len(words), 1))\n"
        "    return out\n"
        "\n"
        "def distinct(prompts, responses, **fields):\n"
        "    # never the same for every response, whatever a random tiny model samples\n"
        "    return [len(set(r.split())) / (1.0 + len(r.split())) + 0.05 * r.count('o') for r in responses]\n")
    return d
