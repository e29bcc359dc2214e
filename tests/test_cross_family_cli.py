"""A GPT-2-family reward model for a Llama-3-family policy through `rlhfkit rl` and `rlhfkit eval`.

`rl_setup.build_models`, `evaluate._scorer` and the quickstart build the scorer with `load_reward_scorer`,
which drives the reward model with its own tokenizer (docs/models.md).
"""

import json

import pytest

from rlhfkit.models.families import save_family


def test_cross_family_reward_model_in_rl_and_eval(tmp_path, capsys):
    from rlhfkit.cli import main

    policy = save_family("llama3", tmp_path / "policy")
    rm = save_family("gpt2", tmp_path / "rm", seed=1, head="score")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "say hi"}, {"prompt": "what is 1 + 2 ?"},
        {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "bye"}]}]))
    common = ["--policy", policy, "--reward-model", rm, "--prompts", str(prompts), "--steps", "2",
              "--prompts-per-step", "3", "--max-new-tokens", "4", "--device", "cpu"]
    assert main(["rl", "--algo", "ppo", "--output", str(tmp_path / "a"), *common]) == 2  # critic from the GPT-2 RM
    assert "--critic" in capsys.readouterr().err
    assert main(["rl", "--algo", "ppo", "--critic", policy, "--output", str(tmp_path / "b"), *common]) == 0
    assert main(["rl", "--algo", "grpo", "--output", str(tmp_path / "c"), *common]) == 0
    assert main(["eval", "--policy", policy, "--reward-model", rm, "--prompts", str(prompts),
                 "--output", str(tmp_path / "e"), "--max-new-tokens", "4", "--device", "cpu"]) == 0
