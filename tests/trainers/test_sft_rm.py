"""SFT and reward-model stages: they learn, micro-batching changes nothing, outputs load back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def sft_config(tiny_dir, data_dir, out, **kw):
    from rlhfkit.trainers.sft import SFTConfig

    base = dict(model=tiny_dir, data=str(data_dir / "sft.jsonl"), output=str(out), epochs=3, batch_size=8,
                lr=3e-3, device="cpu", eval_fraction=0.25, log_every=1, max_length=32)
    base.update(kw)
    return SFTConfig(**base)


def rm_config(tiny_dir, data_dir, out, **kw):
    from rlhfkit.trainers.rm import RMConfig

    base = dict(model=tiny_dir, data=str(data_dir / "prefs.jsonl"), output=str(out), epochs=4, batch_size=4,
                lr=3e-3, device="cpu", eval_fraction=0.25, log_every=1, max_length=32)
    base.update(kw)
    return RMConfig(**base)


def rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"event"' not in x]


def test_sft_learns_and_saves(tiny_dir, data_dir, tmp_path):
    from rlhfkit.models import load_causal_lm
    from rlhfkit.trainers.sft import train_sft

    result = train_sft(sft_config(tiny_dir, data_dir, tmp_path / "sft", epochs=8))
    metrics = rows(tmp_path / "sft")
    assert metrics[-1]["train/loss"] < 0.7 * metrics[0]["train/loss"]
    assert "eval/ppl" in metrics[-1] and metrics[-1]["eval/ppl"] > 1.0
    assert load_causal_lm(result["final"]) is not None
    assert (tmp_path / "sft" / "config.yaml").is_file()


def test_sft_loss_ignores_prompt_tokens(tiny_dir):
    from rlhfkit.models import load_causal_lm, position_ids_from_mask
    from rlhfkit.trainers.sft import sft_token_loss

    model = load_causal_lm(tiny_dir)
    ids = torch.tensor([[4, 5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    loss_mask = torch.tensor([[0, 0, 0, 0, 1, 1]])
    batch = lambda x: {"input_ids": x, "attention_mask": mask, "position_ids": position_ids_from_mask(mask),  # noqa
                       "loss_mask": loss_mask}
    with torch.no_grad():
        a, _ = sft_token_loss(model, batch(ids), 2.0)
        logits = model(input_ids=ids).logits.log_softmax(-1)
    # Only tokens 8 and 9 (predicted at positions 3 and 4) count; the normalizer divides the sum.
    manual = -(logits[0, 3, 8] + logits[0, 4, 9]) / 2
    assert torch.allclose(a, manual, atol=1e-5)


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_micro_batching_gives_the_same_update(stage, tiny_dir, data_dir, tmp_path):
    from rlhfkit.models import load_causal_lm
    from rlhfkit.trainers.rm import train_rm
    from rlhfkit.trainers.sft import train_sft

    make, train = (sft_config, train_sft) if stage == "sft" else (rm_config, train_rm)
    whole = train(make(tiny_dir, data_dir, tmp_path / "whole", epochs=1, batch_size=8, max_grad_norm=0.0))
    micro = train(make(tiny_dir, data_dir, tmp_path / "micro", epochs=1, batch_size=8, micro_batch_size=3,
                       max_grad_norm=0.0))
    if stage == "sft":
        a, b = load_causal_lm(whole["final"]), load_causal_lm(micro["final"])
    else:
        from rlhfkit.models import load_reward_model
        a, b = load_reward_model(whole["final"]), load_reward_model(micro["final"])
    # The gradient itself: every step's loss and pre-clip gradient norm agree to float precision
    # (a wrong normalizer scales the norm; Adam alone would hide that, being scale-invariant).
    rows = [[json.loads(line) for line in open(Path(r["final"]).parent / "metrics.jsonl")] for r in (whole, micro)]
    steps = [[r for r in run if "grad/norm" in r] for run in rows]
    assert len(steps[0]) == len(steps[1]) >= 1
    # Both are sums of same-sign terms (a norm, a mean cross-entropy): float32 order effects are
    # ~1e-6 relative on any CPU; a wrong normalizer changes them by tens of percent.
    for r1, r2 in zip(*steps):
        assert r2["grad/norm"] == pytest.approx(r1["grad/norm"], rel=1e-4)
        assert r2["train/loss"] == pytest.approx(r1["train/loss"], rel=1e-4)
    # The weights: Adam turns float noise in near-zero gradient entries into visible steps (up to
    # ~lr for an entry whose gradient is pure noise, and which entries those are depends on the
    # CPU's summation order), so compare the updates as vectors: a wrongly weighted micro-batch
    # changes the update by percents.
    from rlhfkit.models import load_critic

    start = load_causal_lm(tiny_dir) if stage == "sft" else load_critic(tiny_dir)  # the RM's head starts at 0
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    da, db = flat(a) - flat(start), flat(b) - flat(start)
    assert da.norm() > 0
    assert float((da - db).norm() / da.norm()) < 1e-3


def test_rm_learns_preferences_and_saves_stats(tiny_dir, data_dir, tmp_path):
    from rlhfkit.models import load_reward_model
    from rlhfkit.trainers.rm import train_rm

    result = train_rm(rm_config(tiny_dir, data_dir, tmp_path / "rm"))
    assert result["eval/accuracy"] == 1.0
    model = load_reward_model(result["final"])
    assert model.reward_std > 0 and abs(model.reward_mean - result["eval/score_mean"]) < 1e-6


def test_rm_with_lm_loss_runs(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.rm import train_rm

    train_rm(rm_config(tiny_dir, data_dir, tmp_path / "rm", epochs=1, lm_coef=0.5))
    assert "train/lm_loss" in rows(tmp_path / "rm")[-1]


def test_cli_sft_and_rm(tiny_dir, data_dir, tmp_path):
    from rlhfkit.cli import main

    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"model: {tiny_dir}\ndata: {data_dir / 'sft.jsonl'}\nepochs: 1\nbatch_size: 8\ndevice: cpu\n")
    assert main(["sft", "--config", str(cfg), "--output", str(tmp_path / "s")]) == 0
    assert main(["rm", "--model", str(tmp_path / "s" / "final"), "--data", str(data_dir / "prefs.jsonl"),
                 "--output", str(tmp_path / "r"), "--device", "cpu", "--batch-size", "4"]) == 0
    assert (tmp_path / "r" / "final").is_dir()


def test_cli_reports_bad_config_in_one_line(tiny_dir, data_dir, tmp_path, capsys):
    from rlhfkit.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("modle: x\n")
    assert main(["sft", "--config", str(cfg), "--data", "x", "--output", "y"]) == 2
    err = capsys.readouterr().err
    assert "unknown field 'modle'" in err and "Did you mean 'model'" in err and str(cfg) in err
