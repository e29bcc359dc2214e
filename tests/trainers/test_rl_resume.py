"""Resume gives the same metrics step for step; SIGTERM leaves a resumable checkpoint."""

from __future__ import annotations

import pytest

from tests.trainers.test_rl_smoke import read_metrics, rl_config

KILLER = """
import os, signal
calls = 0
def good_fraction(prompts, responses, **fields):
    global calls
    calls += 1
    if calls == int(os.environ.get("RLHFKIT_TEST_KILL_AT", "0")):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step; the loop finishes the step, then stops
    return [sum(w == "good" for w in r.split()) / max(len(r.split()), 1) for r in responses]
"""


def _strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_sigterm_then_resume_matches_uninterrupted(algo, tiny_dir, data_dir, tmp_path, monkeypatch):
    from rlhfkit.trainers.common import RunInterrupted
    from rlhfkit.trainers.rl import train_rl

    reward = tmp_path / "killer.py"
    reward.write_text(KILLER)
    kw = dict(algo=algo, steps=4, reward_fn=f"{reward}:good_fraction", normalize_rewards=True,
              kl_target=1.0, ppo_epochs=2, minibatch_size=2)
    full = tmp_path / "full"
    train_rl(rl_config(tiny_dir, data_dir, full, **kw))

    broken = tmp_path / "broken"
    monkeypatch.setenv("RLHFKIT_TEST_KILL_AT", "3")  # call 1 is the probe of step 0, call 3 is step 2
    with pytest.raises(RunInterrupted) as info:
        train_rl(rl_config(tiny_dir, data_dir, broken, **kw))
    assert info.value.exit_code == 143
    assert (broken / "checkpoints" / "step-000002" / "COMPLETE").is_file()
    assert not (broken / "final").exists()
    monkeypatch.delenv("RLHFKIT_TEST_KILL_AT")
    train_rl(rl_config(tiny_dir, data_dir, broken, resume=True, **kw))
    assert _strip(read_metrics(broken)) == _strip(read_metrics(full))


def test_half_written_checkpoint_is_ignored(tmp_path):
    import torch

    from rlhfkit.trainers.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 1, {"m": model}, {"step": 1})
    (tmp_path / "step-000002").mkdir()  # a crash before the COMPLETE marker
    (tmp_path / ".step-000003.tmp-1").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-000001"
    assert load_checkpoint(latest_checkpoint(tmp_path), {"m": model})["step"] == 1
