"""`rlhfkit dpo`: it learns, micro-batching changes nothing, the reference is computed once and reused,
resume is exact, SimPO loads no reference, LoRA uses the base weights, every preference format and the CLI work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.trainers.conftest import write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def dpo_config(tiny_dir, data_dir, out, **kw):
    from rlhfkit.trainers.dpo import DPOConfig

    base = dict(model=tiny_dir, data=str(data_dir / "prefs.jsonl"), output=str(out), epochs=2, batch_size=4,
                lr=3e-3, beta=0.5, device="cpu", eval_fraction=0.25, log_every=1, max_length=32,
                eval_kl_prompts=2, eval_max_new_tokens=6)
    base.update(kw)
    return DPOConfig(**base)


def rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines() if '"event"' not in x]


def test_dpo_learns_and_saves(tiny_dir, data_dir, tmp_path):
    from rlhfkit.models import load_causal_lm
    from rlhfkit.reporting.metrics import undefined_metrics
    from rlhfkit.trainers.dpo import train_dpo

    result = train_dpo(dpo_config(tiny_dir, data_dir, tmp_path / "dpo"))
    metrics = rows(tmp_path / "dpo")
    first, last = metrics[0], metrics[-1]
    # step 1 starts at the reference: every implicit reward 0, the loss log 2
    assert first["train/loss"] == pytest.approx(0.6931, abs=1e-3) and first["train/reward_margin"] == 0.0
    assert last["train/loss"] < 0.7 * first["train/loss"]
    assert last["train/reward_margin"] > 0.5 and result["eval/reward_margin"] > 0.5
    assert result["eval/reward_accuracy"] == 1.0
    assert 0.0 <= result["eval/kl_to_ref"] < 50.0  # KL is >= 0 in expectation; 2 samples can dip, not this much
    assert undefined_metrics([k for r in metrics for k in r]) == []
    assert load_causal_lm(result["final"]) is not None
    assert (tmp_path / "dpo" / "config.yaml").is_file() and result["reference_cache"] == "computed"


@pytest.mark.parametrize("loss", ["sigmoid", "simpo"])
def test_micro_batching_gives_the_same_update(loss, tiny_dir, data_dir, tmp_path):
    from rlhfkit.models import load_causal_lm
    from rlhfkit.trainers.dpo import train_dpo

    kw = dict(epochs=1, batch_size=8, max_grad_norm=0.0, loss=loss, eval_kl_prompts=0)
    whole = train_dpo(dpo_config(tiny_dir, data_dir, tmp_path / "whole", **kw))
    micro = train_dpo(dpo_config(tiny_dir, data_dir, tmp_path / "micro", micro_batch_size=3, **kw))
    # The gradient: each step's loss, stats and pre-clip gradient norm agree (a per-micro-batch
    # normalizer scales the norm, which Adam alone would hide).
    for r1, r2 in zip(rows(tmp_path / "whole"), rows(tmp_path / "micro"), strict=True):
        for key in ("grad/norm", "train/loss", "train/reward_margin", "train/chosen_logps"):
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], rel=1e-5, abs=1e-7), key
    a, b = load_causal_lm(whole["final"]), load_causal_lm(micro["final"])
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa, pb, atol=1e-4), name


def test_resume_is_exact_and_reuses_the_reference_cache(tiny_dir, data_dir, tmp_path, monkeypatch):
    import rlhfkit.models
    from rlhfkit.trainers import dpo
    from rlhfkit.trainers.common import RunInterrupted

    loads = []
    real_load = rlhfkit.models.load_reference
    monkeypatch.setattr(rlhfkit.models, "load_reference", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    kw = dict(epochs=2, batch_size=4, save_every=0)  # 3 steps an epoch
    dpo.train_dpo(dpo_config(tiny_dir, data_dir, tmp_path / "full", **kw))
    assert len(loads) == 2  # the cache's computation, and the final eval's KL

    # The same run, stopped by SIGTERM during step 3 (the loop finishes the step, checkpoints, stops).
    calls = {"n": 0}
    real_call = dpo.DPOLoss.__call__

    def killing_call(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_call(self, *args)

    monkeypatch.setattr(dpo.DPOLoss, "__call__", killing_call)
    cut = tmp_path / "cut"
    with pytest.raises(RunInterrupted):
        dpo.train_dpo(dpo_config(tiny_dir, data_dir, cut, **kw))
    assert (cut / "checkpoints" / "step-000003" / "COMPLETE").is_file()
    cache = cut / dpo.CACHE_NAME
    stamp = cache.stat().st_mtime_ns

    monkeypatch.setattr(dpo.DPOLoss, "__call__", real_call)
    monkeypatch.setattr(dpo, "compute_reference_logps", lambda *a, **k: pytest.fail("reference recomputed"))
    loads.clear()
    result = dpo.train_dpo(dpo_config(tiny_dir, data_dir, cut, resume=True, **kw))
    assert result["reference_cache"] == "reused" and cache.stat().st_mtime_ns == stamp
    assert len(loads) == 1  # only the final eval's KL loads the reference
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rs]  # noqa: E731
    assert strip(rows(cut)) == strip(rows(tmp_path / "full"))


def test_cache_key_follows_the_data_not_the_loss(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.dpo import cache_key

    pairs = [{"chosen_ids": [1, 2, 3], "rejected_ids": [1, 2, 4], "prompt_length": 2}]
    key = cache_key(dpo_config(tiny_dir, data_dir, tmp_path), pairs, [])
    assert key == cache_key(dpo_config(tiny_dir, data_dir, tmp_path, beta=0.9, loss="ipo"), pairs, [])
    assert key != cache_key(dpo_config(tiny_dir, data_dir, tmp_path), [{**pairs[0], "rejected_ids": [1, 2, 5]}], [])
    assert key != cache_key(dpo_config(tiny_dir, data_dir, tmp_path), [], pairs)  # same pair, other split
    assert key != cache_key(dpo_config(tiny_dir, data_dir, tmp_path, dtype="bfloat16"), pairs, [])


def test_unreadable_cache_is_recomputed_not_fatal(tmp_path):
    from rlhfkit.trainers.dpo import _read_cache

    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    assert _read_cache(tmp_path / "bad.pt") is None and _read_cache(tmp_path / "missing.pt") is None
    torch.save({"key": "k"}, tmp_path / "good.pt")
    assert _read_cache(tmp_path / "good.pt") == {"key": "k"}


def test_simpo_loads_no_reference(tiny_dir, data_dir, tmp_path, monkeypatch):
    import rlhfkit.models
    from rlhfkit.trainers.dpo import CACHE_NAME, train_dpo

    monkeypatch.setattr(rlhfkit.models, "load_reference", lambda *a, **k: pytest.fail("simpo loaded a reference"))
    result = train_dpo(dpo_config(tiny_dir, data_dir, tmp_path / "simpo", loss="simpo", beta=2.0, simpo_gamma=0.5))
    assert result["reference_cache"] == "none" and not (tmp_path / "simpo" / CACHE_NAME).exists()
    assert "eval/kl_to_ref" not in result
    metrics = rows(tmp_path / "simpo")
    assert metrics[-1]["train/loss"] < metrics[0]["train/loss"] and result["eval/reward_accuracy"] == 1.0


def test_lora_reference_is_the_base_model(tiny_dir, data_dir, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    import rlhfkit.models
    from rlhfkit.trainers.dpo import CACHE_NAME, train_dpo

    full = train_dpo(dpo_config(tiny_dir, data_dir, tmp_path / "full", epochs=1, eval_kl_prompts=0))
    monkeypatch.setattr(rlhfkit.models, "load_reference", lambda *a, **k: pytest.fail("LoRA loaded a reference"))
    lora = train_dpo(dpo_config(tiny_dir, data_dir, tmp_path / "lora", epochs=1, lora_r=4))
    # the trained adapters moved the policy: KL to the adapters-off reference is not exactly 0
    assert abs(lora["eval/kl_to_ref"]) > 1e-6 and lora["reference_cache"] == "computed"
    a, b = (torch.load(Path(r["output"]) / CACHE_NAME, weights_only=True) for r in (full, lora))
    assert torch.allclose(a["train"], b["train"], atol=1e-5)  # adapters off = the model the full run loaded


FORMAT_ROWS = {
    "hh_rlhf": lambda w: {"chosen": f"\n\nHuman: review : {w}\n\nAssistant: the {w} is good",
                          "rejected": f"\n\nHuman: review : {w}\n\nAssistant: the {w} is bad"},
    "shp": lambda w: {"history": f"review : {w}", "human_ref_A": f"the {w} is bad", "human_ref_B": f"the {w} is good",
                      "labels": 0},
    "webgpt": lambda w: {"question": {"full_text": f"review : {w}"}, "answer_0": f"the {w} is good",
                         "answer_1": f"the {w} is bad", "score_0": 1.0, "score_1": -1.0},
    "summarize_from_feedback": lambda w: {"info": {"post": f"the {w}"}, "summaries": [{"text": "bad"}, {"text": "good"}],
                                          "choice": 1},
    "prompt_chosen_rejected": lambda w: {"prompt": [{"role": "user", "content": f"review : {w}"}],
                                         "chosen": f"the {w} is good", "rejected": f"the {w} is bad"},
    # a ranking of two responses: one ordered pair per row, as the pair formats
    "ranked": lambda w: {"prompt": f"review : {w}", "responses": [f"the {w} is bad", f"the {w} is good"],
                         "ranking": [2, 1]},
}


@pytest.mark.parametrize("fmt", sorted(FORMAT_ROWS))
def test_every_preference_format(fmt, tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.dpo import train_dpo

    data = write_jsonl(tmp_path / "pairs.jsonl", [FORMAT_ROWS[fmt](w) for w in ("movie", "phone")] * 4)
    result = train_dpo(dpo_config(tiny_dir, data_dir, tmp_path / "out", data=data, epochs=1, eval_kl_prompts=0,
                                  max_length=64))
    assert result["data/kept"] == 6 and torch.isfinite(torch.tensor(result["eval/loss"]))


def test_rankings_give_every_ordered_pair(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.dpo import train_dpo

    rows = [{"prompt": f"review : {w}", "responses": [f"the {w} is bad", f"the {w} is good", f"the {w} is ok"],
             "ranking": [3, 1, 2]} for w in ("movie", "phone")] * 4
    data = write_jsonl(tmp_path / "ranked.jsonl", rows)
    result = train_dpo(dpo_config(tiny_dir, data_dir, tmp_path / "out", data=data, epochs=1, eval_kl_prompts=0,
                                  max_length=64, eval_fraction=0.25))
    assert result["data/kept"] == 18  # 3 ordered pairs from each of the 6 training prompts


def test_config_errors_name_the_field(tiny_dir, data_dir, tmp_path):
    from rlhfkit.algos import PREFERENCE_LOSSES
    from rlhfkit.config import ConfigError
    from rlhfkit.trainers.dpo import DPOConfig

    for kw, message in ((dict(beta=0.0), "beta must be > 0"),
                        (dict(loss="cdpo", label_smoothing=0.0), "label_smoothing must be in \\(0, 0.5\\) for loss=cdpo"),
                        (dict(loss="dpo"), "loss must be one of sigmoid, cdpo, ipo, simpo"),
                        (dict(fsdp=True), "does not shard with fsdp"),
                        (dict(eval_kl_prompts=-1), "eval_kl_prompts must be >= 0")):
        with pytest.raises(ConfigError, match=message):
            dpo_config(tiny_dir, data_dir, tmp_path, **kw)
    choices = next(f for f in DPOConfig.__dataclass_fields__.values() if f.name == "loss").metadata["choices"]
    assert choices == tuple(PREFERENCE_LOSSES)


def test_cli_subprocess_and_bad_flag(tiny_dir, data_dir, tmp_path, capsys):
    from rlhfkit.cli import main

    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "rlhfkit", "dpo", "--model", str(tiny_dir), "--data", str(data_dir / "prefs.jsonl"),
           "--output", str(out), "--device", "cpu", "--batch-size", "4", "--loss", "ipo", "--beta", "0.5",
           "--lr", "1e-3", "--eval-kl-prompts", "0", "--max-length", "32"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RLHFKIT_QUIET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done; model saved in" in proc.stdout and (out / "final" / "config.json").is_file()
    assert main(["dpo", "--model", str(tiny_dir), "--data", "x", "--output", str(tmp_path / "b"), "--beta", "-1"]) == 2
    assert "config error: beta must be > 0" in capsys.readouterr().err


def test_docs_page_covers_the_config_and_its_examples_build():
    import ast
    import shlex

    from rlhfkit.cli import build_parser
    from rlhfkit.config import config_from_args
    from rlhfkit.trainers.dpo import DPOConfig
    from tests.test_docs import broken_links, code_blocks, missing_fields, unknown_metrics

    page = ROOT / "docs" / "dpo.md"
    text = page.read_text()
    assert missing_fields(DPOConfig, text) == []
    assert unknown_metrics(text) == [] and broken_links(text, page.parent) == []
    comparison = (page.parent / "dpo-vs-ppo.md").read_text()
    assert broken_links(comparison, page.parent) == [] and "dpo-vs-ppo.md" in text
    commands = [shlex.split(line)[1:] for block in code_blocks(text, "bash")
                for line in block.replace("\\\n", " ").splitlines() if line.startswith("rlhfkit dpo")]
    assert len(commands) >= 3
    for argv in commands:
        config_from_args(DPOConfig, build_parser("dpo").parse_args(argv))
    blocks = code_blocks(text, "python")
    for node in ast.walk(ast.parse("\n".join(blocks))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DPOConfig":
            DPOConfig(**{k.arg: ast.literal_eval(k.value) for k in node.keywords})
    # the algos example runs and gives the value its comment states
    scope: dict = {}
    exec(next(b for b in blocks if "preference_loss(" in b), scope)  # noqa: S102
    assert scope["loss"].item() == pytest.approx(0.598, abs=1e-3)
    # the checks can fail: an undocumented field and a bad flag are caught
    assert missing_fields(DPOConfig, text.replace("`simpo_gamma`", "").replace("--simpo-gamma", ""))
    with pytest.raises(SystemExit):
        build_parser("dpo").parse_args(["dpo", "--model", "m", "--data", "d", "--output", "o", "--loss", "dpo"])
