"""The held-out probe, the overoptimization detector on recorded probe streams, and the best checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from tests.trainers.test_rl_smoke import final_params, read_metrics, rl_config


def test_probe_measures_the_kl_even_without_a_kl_penalty_and_keeps_the_best(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.rl import train_rl

    result = train_rl(rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", kl_coef=0.0, steps=4, probe_every=2,
                                probe_size=4, lr=3e-3, gold_fn=f"{data_dir / 'reward.py'}:distinct"))
    rows = read_metrics(tmp_path)
    probed = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "probe/score" in x]
    assert [r["step"] for r in probed] == [0, 2, 4]  # step 0: the starting policy
    assert all("probe/kl_mean" in r and "probe/gold_mean" in r and r["probe/ppl_ref"] > 1 for r in probed)
    assert abs(probed[0]["probe/kl_mean"]) < 1e-5 and "probe/gold_drop" not in probed[0]  # the reference itself
    assert probed[-1]["probe/kl_mean"] != 0.0  # a reference was loaded for the probe alone
    assert all(r["probe/gold_drop_se"] >= 0 for r in probed[1:])
    assert all(r["kl/mean"] == 0.0 for r in rows)  # training still has no KL term
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["criterion"] == "probe/gold_mean"
    assert best["value"] == max(r["probe/gold_mean"] for r in probed)
    assert result["best"] == str(tmp_path / "best") and (tmp_path / "best" / "config.json").is_file()


def test_probe_off_and_same_training(tiny_dir, data_dir, tmp_path):
    # The probe samples with its own keys: the training run is the same with or without it.
    from rlhfkit.trainers.rl import train_rl

    a = train_rl(rl_config(tiny_dir, data_dir, tmp_path / "a", algo="grpo", steps=2, probe_every=1, probe_size=3))
    b = train_rl(rl_config(tiny_dir, data_dir, tmp_path / "b", algo="grpo", steps=2, probe_every=0))
    assert torch.equal(final_params(a["final"]), final_params(b["final"]))
    assert "best" not in b and not (tmp_path / "b" / "best.json").exists()
    assert not any(k.startswith("probe/") for r in read_metrics(tmp_path / "b") for k in r)


def stream(gold, score, kl=None, ppl=None, se=0.02, every=10):
    rows = []
    for i, (g, s) in enumerate(zip(gold or score, score)):
        row = {"step": (i + 1) * every, "probe/score_mean": s, "probe/gold_se": se}
        if gold is not None:
            row["probe/gold_mean"] = g
        if kl is not None:
            row["probe/kl_mean"] = kl[i]
        if ppl is not None:
            row["probe/ppl_ref"] = ppl[i]
        rows.append(row)
    return rows


def fires(rows) -> list:
    from rlhfkit.reporting.health import HealthMonitor

    monitor = HealthMonitor()
    return [w for r in rows for w in monitor.update(r["step"], r) if w.detector == "overoptimization"]


def test_overoptimization_with_gold():
    kl = [0.0, 1.0, 2.0, 4.0, 6.0]
    hacked = stream(gold=[0.0, 0.2, 0.3, 0.1, 0.05], score=[0.3, 0.6, 0.9, 1.1, 1.3], kl=kl)  # 10 se below
    found = fires(hacked)
    assert [w.step for w in found] == [40] and found[0].since == 30  # the best probe: step 30
    assert found[0].figures["best_step"] == 30 and found[0].figures["gold_drop"] == pytest.approx(0.2)
    assert found[0].figures["kl_at_best"] == 2.0 and found[0].figures["kl_now"] == 4.0
    assert "from 2 to 4 nats" in found[0].message
    # the same fall at a steady KL (gained 0.5 nats < overopt_kl_gain 1): a healthy run wandering, no event
    assert fires(stream(gold=[0.0, 0.2, 0.3, 0.1, 0.05], score=[0.3, 0.6, 0.9, 1.1, 1.3],
                        kl=[0.0, 1.0, 2.0, 2.5, 2.4])) == []
    # within 3 standard errors is noise; a falling gold with a falling score is not over-optimization
    assert fires(stream(gold=[0.0, 0.2, 0.3, 0.25, 0.25], score=[0.3, 0.6, 0.9, 1.1, 1.3], kl=kl)) == []
    assert fires(stream(gold=[0.0, 0.2, 0.3, 0.1, 0.0], score=[0.3, 0.6, 0.9, 0.5, 0.4], kl=kl)) == []
    # overopt_probes 2: the fall must hold on a second probe; a dip that comes back is not enough
    from rlhfkit.reporting.health import HealthConfig, HealthMonitor

    def fires_held(gold):
        monitor = HealthMonitor(HealthConfig(overopt_probes=2))
        rows = stream(gold=gold, score=[0.3, 0.6, 0.9, 1.1, 1.3], kl=kl)
        return [w.step for r in rows for w in monitor.update(r["step"], r) if w.detector == "overoptimization"]

    assert fires_held([0.0, 0.2, 0.3, 0.1, 0.05]) == [50] and fires_held([0.0, 0.2, 0.3, 0.1, 0.29]) == []


def test_overoptimization_without_gold():
    score = [0.3, 0.6, 0.9, 1.1, 1.3]
    drift = stream(None, score, kl=[1, 4, 8, 12, 16], ppl=[5.0, 5.5, 6.0, 8.0, 9.0])
    assert [w.step for w in fires(drift)] == [40]
    assert fires(stream(None, score, kl=[1, 2, 3, 4, 5], ppl=[5.0, 5.5, 6.0, 8.0, 9.0])) == []  # within budget
    assert fires(stream(None, score, kl=[1, 4, 8, 12, 16], ppl=[5.0, 5.1, 5.2, 5.3, 5.4])) == []  # no drift


def test_best_checkpoint_choice(tmp_path):
    from rlhfkit.rollout import GenerationSettings
    from rlhfkit.trainers.probe import Probe, keep_if_best

    probe = Probe(rows=[], settings=GenerationSettings(max_new_tokens=1), keys=torch.zeros(0), kl_penalty=0.1)
    saved = []
    for step, (score, kl) in enumerate([(1.0, 0.0), (2.0, 5.0), (1.8, 1.0)], start=1):
        keep_if_best(probe, {"probe/score_mean": score, "probe/kl_mean": kl}, step, saved.append, tmp_path)
    # 1.0, 2.0 - 0.5 = 1.5, 1.8 - 0.1 = 1.7: the third probe is best without gold
    assert [p.name for p in saved] == ["best", "best", "best"] and probe.best["step"] == 3
    assert probe.best["value"] == pytest.approx(1.7)
    keep_if_best(probe, {"probe/score_mean": 9.0, "probe/kl_mean": 100.0}, 4, saved.append, tmp_path)
    assert probe.best["step"] == 3  # a high score far from the reference is not better
    assert json.loads((tmp_path / "best.json").read_text())["step"] == 3
    # Ranks other than 0 (out_dir None) keep the same record and write nothing: in a two-rank run both
    # ranks once wrote best.json.tmp and one rank's os.replace found the other's already moved.
    other = Probe(rows=[], settings=GenerationSettings(max_new_tokens=1), keys=torch.zeros(0), kl_penalty=0.1)
    written = []
    for step, (score, kl) in enumerate([(1.0, 0.0), (2.0, 5.0), (1.8, 1.0)], start=1):
        assert keep_if_best(other, {"probe/score_mean": score, "probe/kl_mean": kl}, step, written.append, None)
    assert written == [] and other.best == probe.best


def test_paired_drop_by_hand():
    from rlhfkit.trainers.probe import paired_drop

    # differences 0.2, 0.0, 0.2: mean 2/15, sample std sqrt(1/75), se sqrt(1/75) / sqrt(3) = 1/15
    drop, se = paired_drop(torch.tensor([0.5, 0.2, 0.1]), torch.tensor([0.3, 0.2, -0.1]))
    assert drop == pytest.approx(2 / 15) and se == pytest.approx(1 / 15)


def test_overoptimization_reads_the_paired_drop():
    # The probe's gold wanders within its unpaired standard error (0.1), but per prompt it fell by 0.06
    # and 0.07 with a paired standard error of 0.01: the same answers got worse. Probes from step 0.
    rows = stream(gold=[0.10, 0.12, 0.06, 0.05], score=[0.3, 0.6, 0.9, 1.0], kl=[0.0, 0.5, 2.0, 3.0], se=0.1)
    for row in rows:
        row["step"] -= 10
    assert fires(rows) == []  # unpaired: 0.07 < 3 x 0.1
    rows[2].update({"probe/gold_drop": 0.06, "probe/gold_drop_se": 0.01})
    rows[3].update({"probe/gold_drop": 0.07, "probe/gold_drop_se": 0.01})
    found = fires(rows)
    assert [w.step for w in found] == [20] and found[0].since == 10
    assert found[0].figures["gold_drop_se"] == pytest.approx(0.01)
    rows[2].update({"probe/gold_drop_se": 0.025})  # 2.4 paired standard errors: noise; the next probe's 7 fire
    assert [w.step for w in fires(rows)] == [30]
    rows[3].update({"probe/gold_drop_se": 0.025})
    assert fires(rows) == []


def test_overoptimization_compares_with_the_first_probe_and_ensemble_disagreement():
    score = [0.3, 0.6, 0.9, 1.1, 1.3]
    rows = stream(None, score, kl=[0, 4, 8, 12, 16], ppl=[5.0, 5.1, 5.2, 5.3, 5.4])  # no perplexity drift
    assert fires(rows) == []
    for row, spread in zip(rows, [0.1, 0.12, 0.15, 0.25, 0.3]):
        row["probe/ensemble_std"] = spread
    found = fires(rows)  # the reward models disagree 2.5x more than at the first probe
    assert [w.step for w in found] == [40] and found[0].figures["ensemble_std_start"] == pytest.approx(0.1)
    assert "disagree 2.5x more" in found[0].message


def test_reward_model_ensemble_in_a_run(tiny_dir, data_dir, tmp_path):
    from rlhfkit.cli import main
    from rlhfkit.models import load_tokenizer
    from rlhfkit.models.tiny import build_tiny_classifier
    from rlhfkit.trainers.rl import train_rl

    tok = load_tokenizer(tiny_dir)
    folders = []
    for seed in (3, 4):
        folder = tmp_path / f"rm{seed}"
        build_tiny_classifier(tok, seed=seed, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
        folders.append(str(folder))
    kw = dict(algo="grpo", steps=2, probe_every=2, probe_size=3, reward_fn=None, seeded_sampling=True)
    one = [train_rl(rl_config(tiny_dir, data_dir, tmp_path / f"one{i}", reward_model=f, **kw)) for i, f in
           enumerate(folders)]
    both = train_rl(rl_config(tiny_dir, data_dir, tmp_path / "both", reward_model=tuple(folders), **kw))
    rows = read_metrics(tmp_path / "both")
    singles = [read_metrics(tmp_path / f"one{i}") for i in range(2)]
    # Step 1 samples the same responses in the three runs: the ensemble's score is the members' mean,
    # its spread half their gap (two members: population std = |a - b| / 2, averaged over rows).
    assert rows[0]["reward/score_mean"] == pytest.approx(
        (singles[0][0]["reward/score_mean"] + singles[1][0]["reward/score_mean"]) / 2, abs=1e-5)
    assert rows[0]["reward/ensemble_std"] > 0
    assert "probe/ensemble_std" in rows[-1] and "reward/ensemble_std" not in singles[0][0]
    # the probe's own spread is probe/ensemble_std; the steps' reward/ensemble_std is theirs alone
    train_rl(rl_config(tiny_dir, data_dir, tmp_path / "quiet", reward_model=tuple(folders), **{**kw, "probe_every": 0}))
    quiet = read_metrics(tmp_path / "quiet")
    assert [r["reward/ensemble_std"] for r in rows] == pytest.approx([r["reward/ensemble_std"] for r in quiet],
                                                                      rel=1e-6)
    assert both["output"] and one[0]["output"]
    # the CLI repeats the flag; k > 0 pays less for disputed answers
    out = tmp_path / "cli"
    assert main(["rl", "--algo", "grpo", "--policy", str(tiny_dir), "--prompts", str(data_dir / "prompts.jsonl"),
                 "--reward-model", folders[0], "--reward-model", folders[1], "--reward-ensemble-k", "1",
                 "--output", str(out), "--steps", "1", "--prompts-per-step", "2", "--max-new-tokens", "6",
                 "--probe-every", "0", "--seeded-sampling", "--device", "cpu"]) == 0
    row = read_metrics(out)[0]
    assert row["reward/score_mean"] < rows[0]["reward/score_mean"]  # mean - std < mean (same samples)
    import yaml
    assert yaml.safe_load((out / "config.yaml").read_text())["reward_model"] == folders


def test_probe_samples_are_written_and_trimmed_on_resume(tiny_dir, data_dir, tmp_path):
    from rlhfkit.rollout import GenerationSettings
    from rlhfkit.trainers.probe import Probe
    from rlhfkit.trainers.rl import train_rl

    train_rl(rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", steps=2, probe_every=1, probe_size=3,
                       gold_fn=f"{data_dir / 'reward.py'}:distinct"))
    lines = [json.loads(x) for x in (tmp_path / "probe_samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert {"prompt", "response", "score", "gold"} <= set(lines[0])
    probe = Probe(rows=[], settings=GenerationSettings(max_new_tokens=1), keys=torch.zeros(0), kl_penalty=0.0,
                  samples=tmp_path / "probe_samples.jsonl")
    probe.forget_after(1)
    assert [json.loads(x)["step"] for x in probe.samples.read_text().splitlines()] == [0, 0, 0, 1, 1, 1]


def test_overoptimization_needs_a_drop_that_matters():
    # A measurable but small dip (0.05 with a paired se of 0.01) is what healthy runs show;
    # with the first probe's per-prompt gold spread 0.4, the smallest drop that fires is 0.2 x 0.4 = 0.08.
    def rows(drops):
        out = stream(gold=[0.10, 0.12, 0.07, -0.05, -0.06], score=[0.3, 0.6, 0.9, 1.0, 1.1],
                     kl=[0.0, 0.5, 2.0, 3.0, 4.0], se=0.1)
        for row, drop in zip(out, [None, None, *drops]):
            row["step"] -= 10
            row["probe/gold_std"] = 0.4
            if drop is not None:
                row.update({"probe/gold_drop": drop, "probe/gold_drop_se": 0.01})
        return out

    assert [w.step for w in fires(rows([0.05, 0.09, 0.18]))] == [30]
    assert [w.step for w in fires(rows([0.05, 0.07, 0.18]))] == [40]  # 0.07 < 0.08 at step 30
    assert fires(rows([0.05, 0.07, 0.07])) == []


@pytest.mark.parametrize("name, fired, loosened", [
    # (the runs fired again at 63 / 71 after the 25-step cooldown; replayed on probe rows alone, the
    # monitor sees the next probe, 64 / 72)
    ("probe_kl0_seed0", [38, 64, 90], {}),
    ("probe_kl0_seed2", [46, 72, 98], {}),
    # default runs: gold wanders down at a steady KL late in the run (seed 1: fires at 90 without the KL
    # condition), or by less than 3 paired standard errors (seed 3: fires at 58 at 2 se)
    ("probe_def_seed1", [], {"overopt_kl_gain": 0.0}),
    ("probe_def_seed3", [], {"overopt_gold_drop": 2.0}),
])
def test_overoptimization_on_recorded_quickstart_probes(name, fired, loosened):
    # Probe rows recorded from `rlhfkit quickstart --seed S [--kl-coef 0]` (docs/health/reward-hacking.md):
    # the kl_coef 0 runs fire while their probe gold is still within noise of the start's; the default
    # runs fire nothing, and each fires once the one condition that holds it back is loosened.
    from pathlib import Path

    from rlhfkit.reporting.health import HealthConfig, HealthMonitor

    path = Path(__file__).resolve().parents[1] / "reporting" / "data" / f"{name}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [w.step for w in fires(rows)] == fired
    if loosened:
        monitor = HealthMonitor(HealthConfig(**loosened))
        steps = [w.step for r in rows for w in monitor.update(r["step"], r) if w.detector == "overoptimization"]
        assert steps[:1] == {"probe_def_seed1": [90], "probe_def_seed3": [58]}[name]
