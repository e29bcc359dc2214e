"""`rl --reward-url` / `--reward-judge-url` on loopback with real servers: the same run as in-process
scoring; a killed service stops the run with a resumable checkpoint; a slow one triggers the policy."""

from __future__ import annotations

import pytest

from tests.remote_servers import CliServer, ThreadServer, fake_judge, fake_service
from tests.trainers.test_rl_smoke import read_metrics, rl_config

KILLER = """
import os
calls = 0
def distinct(prompts, responses, **fields):
    global calls
    calls += 1
    if calls == int(os.environ.get("RLHFKIT_TEST_DIE_AT", "0")):
        os._exit(1)  # the service dies in the middle of a request
    return [len(set(r.split())) / (1.0 + len(r.split())) + 0.05 * r.count('o') for r in responses]
"""


def same_run(rows):
    """Rows without timings and the remote-failure counters (an in-process run has none)."""
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "reward/remote_"))} for r in rows]


def test_cli_rl_against_serve_reward_is_the_in_process_run(tiny_dir, data_dir, tmp_path):
    from rlhfkit.cli import main
    from rlhfkit.trainers.rl import train_rl

    kw = dict(algo="grpo", steps=3, reward_fn=f"{data_dir / 'reward.py'}:distinct")
    train_rl(rl_config(tiny_dir, data_dir, tmp_path / "local", **kw))
    with CliServer(["--reward-fn", f"{data_dir / 'reward.py'}:distinct"]) as server:
        code = main(["rl", "--algo", "grpo", "--policy", tiny_dir, "--prompts", str(data_dir / "prompts.jsonl"),
                     "--output", str(tmp_path / "served"), "--reward-url", server.url, "--reward-batch-size", "3",
                     "--steps", "3", "--prompts-per-step", "2", "--max-new-tokens", "6", "--lr", "1e-3",
                     "--device", "cpu", "--seed", "0"])
    assert code == 0
    local, served = read_metrics(tmp_path / "local"), read_metrics(tmp_path / "served")
    assert len(served) == 3 and served[-1]["reward/remote_failures"] == 0.0
    assert same_run(served) == same_run(local)
    assert local[0]["reward/score_std"] > 0  # the reward varies: a wrong row order would show


def plain_text_policy(tiny_dir, out):
    """The tiny policy, edited so it never samples <pad>, <bos> or <unk>: its texts then give back its ids.
    Hidden dimension 0 is made large and positive at every position (the embeddings' column 0), and the
    special tokens' output rows read it with a large negative weight."""
    import torch

    from rlhfkit.models import load_causal_lm, load_tokenizer

    tok, model = load_tokenizer(tiny_dir), load_causal_lm(tiny_dir)
    special = [tok.pad_token_id, tok.bos_token_id, tok.unk_token_id]
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] += 30.0
        model.get_output_embeddings().weight[special, 0] = -20.0
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return str(out), tok


def test_served_reward_model_gives_the_in_process_run(tiny_dir, data_dir, tmp_path):
    from rlhfkit.models.tiny import build_tiny_classifier
    from rlhfkit.serve import ModelBackend, make_app
    from rlhfkit.trainers.rl import train_rl

    # In process the reward model reads the sampled ids; served, it reads the texts. They agree when
    # the texts give back the ids (a random tiny policy would sample <pad> mid-response: not here).
    policy, tok = plain_text_policy(tiny_dir, tmp_path / "policy")
    rm = tmp_path / "rm"
    build_tiny_classifier(tok, seed=3, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(str(rm))
    tok.save_pretrained(str(rm))
    kw = dict(algo="rloo", steps=2, reward_fn=None)
    local = train_rl(rl_config(policy, data_dir, tmp_path / "local", reward_model=str(rm), **kw))
    with ThreadServer(make_app(ModelBackend(str(rm)), max_batch_tokens=64)) as server:
        served = train_rl(rl_config(policy, data_dir, tmp_path / "served", reward_url=(server.url,),
                                    reward_batch_size=3, **kw))
    # float32 rounding apart (the service's forwards have other shapes), the same run
    for key in ("reward/score_mean", "reward/score_std", "loss/policy", "kl/mean", "response/length_mean"):
        assert served[key] == pytest.approx(local[key], rel=1e-4, abs=1e-6), key
    assert local["reward/score_std"] > 0


def test_killed_service_stops_with_a_checkpoint_and_resume_finishes_the_run(tiny_dir, data_dir, tmp_path):
    from rlhfkit.trainers.common import TrainingError
    from rlhfkit.trainers.rl import train_rl

    (tmp_path / "killer.py").write_text(KILLER)
    spec = f"{tmp_path / 'killer.py'}:distinct"
    kw = dict(algo="grpo", steps=4, normalize_rewards=True, kl_target=1.0, ppo_epochs=2, minibatch_size=4)
    train_rl(rl_config(tiny_dir, data_dir, tmp_path / "full", reward_fn=spec, **kw))

    out = tmp_path / "broken"
    remote = dict(reward_fn=None, reward_batch_size=64, reward_retries=1, **kw)  # one request per step
    # request 1 is the probe of the starting policy (step 0); request 4 is step 3's
    with CliServer(["--reward-fn", spec], env={"RLHFKIT_TEST_DIE_AT": "4"}) as server:
        with pytest.raises(TrainingError) as info:
            train_rl(rl_config(tiny_dir, data_dir, out, reward_url=(server.url,), **remote))
        assert server.proc.wait(timeout=30) == 1  # it really died, in step 3
    assert server.url in str(info.value) and "--resume" in str(info.value)
    assert (out / "checkpoints" / "step-000002" / "COMPLETE").is_file() and not (out / "final").exists()
    assert len(read_metrics(out)) == 2

    with CliServer(["--reward-fn", spec], port=server.port) as again:  # restarted, same address
        train_rl(rl_config(tiny_dir, data_dir, out, reward_url=(again.url,), resume=True, **remote))
    assert same_run(read_metrics(out)) == same_run(read_metrics(tmp_path / "full"))
    assert (out / "final").is_dir()


def test_a_slow_service_with_policy_zero_scores_zero_and_counts(tiny_dir, data_dir, tmp_path):
    import asyncio

    from rlhfkit.trainers.rl import train_rl

    async def slow(body):
        await asyncio.sleep(2)
        return {"scores": [1.0] * len(body["prompts"])}

    with ThreadServer(fake_service(slow)) as server:
        train_rl(rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", steps=2, reward_fn=None,
                           reward_url=(server.url,), reward_timeout=0.2, reward_retries=0, reward_on_error="zero",
                           reward_batch_size=4))
    rows = read_metrics(tmp_path)
    assert [r["reward/score_mean"] for r in rows] == [0.0, 0.0]
    assert [(r["reward/remote_failures"], r["reward/remote_zeroed"]) for r in rows] == [(2.0, 8.0), (2.0, 8.0)]


def test_judge_reward_in_rl_keeps_the_key_secret(tiny_dir, data_dir, tmp_path, monkeypatch, capfd):
    from rlhfkit.trainers.rl import train_rl

    secret = "sk-test-judge-key-0000"
    monkeypatch.setenv("RLHFKIT_TEST_JUDGE_KEY", secret)
    app = fake_judge(lambda content: f"Fine.\nScore: {2 + len(content.split('[Answer]')[1].split()) % 8}")
    with ThreadServer(app) as server:
        result = train_rl(rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", steps=2, reward_judge_url=f"{server.url}/v1",
                                    reward_judge_model="tiny-judge", reward_judge_api_key_env="RLHFKIT_TEST_JUDGE_KEY",
                                    reward_judge_weight=2.0))
    # 2 steps x 8 rows, and the probe of the starting policy: the 16 prompts of the file (probe_size 64)
    assert len(app.state.seen) == 2 * 8 + 16 and {s[1] for s in app.state.seen} == {f"Bearer {secret}"}
    # good_fraction (weight 1) + 2 x judge in [0, 1]
    assert 0 < result["reward/score_mean"] <= 3 and result["reward/remote_failures"] == 0.0
    saved = "".join(p.read_text() for p in tmp_path.glob("*.yaml")) + (tmp_path / "metrics.jsonl").read_text()
    assert "RLHFKIT_TEST_JUDGE_KEY" in saved and secret not in saved + "".join(capfd.readouterr())


def test_config_needs_a_reward_and_checks_the_remote_fields(tiny_dir, data_dir, tmp_path):
    from rlhfkit.config import ConfigError

    with pytest.raises(ConfigError, match="give a reward"):
        rl_config(tiny_dir, data_dir, tmp_path, reward_fn=None)
    with pytest.raises(ConfigError, match="at most one"):
        rl_config(tiny_dir, data_dir, tmp_path, reward_model="rm")
    with pytest.raises(ConfigError, match="expected http"):
        rl_config(tiny_dir, data_dir, tmp_path, reward_url=("localhost:8000",))
    with pytest.raises(ConfigError, match="reward-judge-model"):
        rl_config(tiny_dir, data_dir, tmp_path, reward_judge_url="http://j/v1")
    with pytest.raises(ConfigError, match="reward_timeout"):
        rl_config(tiny_dir, data_dir, tmp_path, reward_url=("http://h:1",), reward_timeout=0)
    cfg = rl_config(tiny_dir, data_dir, tmp_path, reward_fn=None, reward_url=("http://a:1", "http://b:2:0.5"))
    assert cfg.reward_url == ("http://a:1", "http://b:2:0.5")


def test_eval_scores_with_a_reward_service_as_in_process(tiny_dir, data_dir, tmp_path):
    # `rlhfkit eval --reward-url`: the same score_mean as the reward function in-process.
    import json

    from rlhfkit.evaluate import EvalConfig, run_eval

    fn = f"{data_dir / 'reward.py'}:distinct"
    common = dict(policy=tiny_dir, prompts=str(data_dir / "prompts.jsonl"), num_prompts=6, max_new_tokens=6,
                  device="cpu", seed=0)
    run_eval(EvalConfig(output=str(tmp_path / "local"), reward_fn=fn, **common))
    def distinct(responses):  # the conftest's reward.py:distinct
        return [len(set(r.split())) / (1.0 + len(r.split())) + 0.05 * r.count("o") for r in responses]

    with ThreadServer(fake_service(lambda body: {"scores": distinct(body["responses"])})) as server:
        run_eval(EvalConfig(output=str(tmp_path / "served"), reward_url=(server.url,), reward_batch_size=4, **common))
    local = json.loads((tmp_path / "local" / "eval.json").read_text())
    served = json.loads((tmp_path / "served" / "eval.json").read_text())
    key = next(k for k in local if isinstance(local[k], dict) and "score_mean" in local[k])
    assert served[key]["score_mean"] == local[key]["score_mean"] and local[key]["score_mean"] != 0.0
