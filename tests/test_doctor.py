"""`rlhfkit doctor` names each hazard when it is planted, and stays quiet about the ones that are not.

Each test plants one hazard in an otherwise sound set-up (tiny family folders, a JSONL of prompts)
and checks its finding, its level and the exit status.
"""

import json
from pathlib import Path

import pytest

from rlhfkit.doctor import DoctorConfig, diagnose, run_doctor
from rlhfkit.models.families import build_family_model, build_family_tokenizer, save_family

PROMPTS = ["what is 1 + 2 ?", "tell me a short story about a cat .", "hello there , how are you today ?"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor")
    save_family("llama3", root / "llama3")
    save_family("llama3", root / "llama3_rm", seed=1, head="score")
    save_family("gpt2", root / "gpt2_rm", seed=2, head="score")
    save_family("opt", root / "opt")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": "3"}) + "\n" for p in PROMPTS))
    (root / "rewards.py").write_text(
        "import math\n"
        "def length(prompts, responses, **f):\n    return [float(len(r)) for r in responses]\n"
        "def const(prompts, responses, **f):\n    return [1.0 for r in responses]\n"
        "def nan(prompts, responses, **f):\n    return [math.nan] + [0.0] * (len(responses) - 1)\n")
    return root


def _cfg(root, **kw):
    base = dict(policy=str(root / "llama3"), prompts=str(root / "prompts.jsonl"), reward_fn=f"{root}/rewards.py:length",
                max_new_tokens=4, num_prompts=3, device="cpu", n=2)
    base.update(kw)
    return DoctorConfig(**base)


def test_sound_set_up_names_the_handled_hazards_and_exits_0(root, capsys):
    report = diagnose(_cfg(root, reward_model=str(root / "llama3_rm"), reward_fn=None, algo="ppo"))
    assert {"no_pad_token", "pad_is_eos", "several_eos_ids"} <= report.codes("info")
    assert not report.codes("blocking") and "tokenizer_mismatch" not in report.codes()
    assert report.sections["reward_model"]["how"].startswith("the reward model shares")
    assert report.sections["prompts"]["examples"][0]["rendered"].startswith("<|begin_of_text|><|start_header_id|>")
    assert run_doctor(_cfg(root, json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["exit_code"] == 0 and out["rollout"]["samples"] == 6 and "estimate" in out


def test_cross_family_reward_model_is_explained_and_its_critic_refused(root):
    report = diagnose(_cfg(root, reward_model=str(root / "gpt2_rm"), reward_fn=None, algo="grpo"))
    assert "tokenizer_mismatch" in report.codes("info") and "plain text" in report.sections["reward_model"]["how"]
    assert report.exit_code(strict=False) == 0
    ppo = diagnose(_cfg(root, reward_model=str(root / "gpt2_rm"), reward_fn=None, algo="ppo"))
    assert "critic_vocabulary" in ppo.codes("blocking") and ppo.exit_code(strict=False) == 2
    assert "--critic" in next(f["message"] for f in ppo.findings if f["code"] == "critic_vocabulary")


def test_reward_hazards(root):
    nan = diagnose(_cfg(root, reward_fn=f"{root}/rewards.py:nan"))
    assert "reward_nan" in nan.codes("blocking") and nan.exit_code(False) == 2
    const = diagnose(_cfg(root, reward_fn=f"{root}/rewards.py:const"))
    assert {"reward_no_spread", "uniform_groups"} <= const.codes("warning")
    assert const.sections["reward"]["uniform_groups_share"] == 1.0
    assert const.exit_code(strict=False) == 0 and const.exit_code(strict=True) == 1
    fine = diagnose(_cfg(root))
    assert not {"reward_nan", "reward_no_spread"} & fine.codes()


def test_truncation_and_missing_end_of_turn(root, tmp_path):
    cut = diagnose(_cfg(root, max_new_tokens=1))
    assert "high_truncation" in cut.codes("warning")
    # Llama 3 whose generation config forgot <|eot_id|>: the template's turn end would not stop generation.
    tok = build_family_tokenizer("llama3")
    model = build_family_model("llama3", tok)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(str(tmp_path / "p"))
    tok.save_pretrained(str(tmp_path / "p"))
    report = diagnose(_cfg(root, policy=str(tmp_path / "p")))
    assert "end_of_turn_not_eos" in report.codes("warning")
    assert "<|eot_id|>" in report.sections["tokenizer"]["eos_ids_that_stop_generation"].values()  # stops anyway
    assert "end_of_turn_not_eos" not in diagnose(_cfg(root)).codes()


def test_template_without_generation_prompt(root, tmp_path):
    tok = build_family_tokenizer("llama3")
    tok.chat_template = tok.chat_template.replace("add_generation_prompt", "false")
    model = build_family_model("llama3", tok)
    model.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    report = diagnose(_cfg(root, policy=str(tmp_path)))
    assert "template_no_generation_prompt" in report.codes("warning")
    assert "template_no_generation_prompt" not in diagnose(_cfg(root)).codes()


def test_doubled_bos_and_pre_rendered_prompts(root, tmp_path):
    opt = Path(root / "opt")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "</s>what is 1 + 2 ?"}) + "\n"
                                      + json.dumps({"prompt": "what is 4 + 5 ?"}) + "\n")
    report = diagnose(_cfg(root, policy=str(opt), prompts=str(tmp_path / "p.jsonl")))
    assert "doubled_bos" in report.codes("warning")
    assert "doubled_bos" not in diagnose(_cfg(root, policy=str(opt))).codes()
    rendered = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nsay hi<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    (tmp_path / "r.jsonl").write_text(json.dumps({"prompt": rendered}) + "\n")
    report = diagnose(_cfg(root, prompts=str(tmp_path / "r.jsonl")))
    assert "prompt_already_rendered" in report.codes("info") and "doubled_bos" not in report.codes()


def test_tokenizer_larger_than_the_model_blocks(root, tmp_path):
    tok = build_family_tokenizer("gpt2")
    model = build_family_model("gpt2", tok)
    tok.add_tokens([f"<new_{i}>" for i in range(3)])
    model.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    report = diagnose(_cfg(root, policy=str(tmp_path)))
    assert "tokenizer_larger_than_model" in report.codes("blocking") and report.exit_code(False) == 2
    assert "rollout" not in report.sections  # it stops before sampling past the embeddings


def test_config_errors():
    from rlhfkit.config import ConfigError

    with pytest.raises(ConfigError, match="exactly one"):
        DoctorConfig(policy="p", prompts="q")


def test_quickstart_style_folders(root, tiny_model_dir, tiny_reward_model_dir, capsys):
    """The bundled tiny Llama with its word tokenizer (what the quickstart saves): nothing to warn about
    beyond what sampling a random model gives."""
    code = run_doctor(_cfg(root, policy=str(tiny_model_dir), reward_model=str(tiny_reward_model_dir), reward_fn=None,
                           algo="ppo"))
    text = capsys.readouterr().out
    assert code == 0 and "== exit status 0" in text
    assert "shares the policy's tokenizer" in text and "[blocking]" not in text


def test_prompt_truncation_reward_scale_and_reward_errors(root, tmp_path):
    (tmp_path / "more.py").write_text(
        "def big(prompts, responses, **f):\n    return [1000.0 * len(r) for r in responses]\n"
        "def broken(prompts, responses, **f):\n    raise KeyError('score')\n")
    short = diagnose(_cfg(root, max_prompt_length=5))
    assert "prompts_truncated" in short.codes("warning") and short.sections["prompts"]["truncated"] == 3
    assert "reward_scale" in diagnose(_cfg(root, reward_fn=f"{tmp_path}/more.py:big")).codes("warning")
    broken = diagnose(_cfg(root, reward_fn=f"{tmp_path}/more.py:broken"))
    assert "reward_error" in broken.codes("blocking") and broken.exit_code(False) == 2
    assert not {"prompts_truncated", "reward_scale", "reward_error"} & diagnose(_cfg(root)).codes()


def test_cli_returns_the_exit_status(root, capsys):
    from rlhfkit.cli import main

    args = ["doctor", "--policy", str(root / "llama3"), "--prompts", str(root / "prompts.jsonl"), "--device", "cpu",
            "--max-new-tokens", "4"]
    assert main([*args, "--reward-fn", f"{root}/rewards.py:nan", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["exit_code"] == 2
    assert main([*args, "--reward-fn", f"{root}/rewards.py:const", "--strict"]) == 1
    assert main([*args, "--reward-fn", f"{root}/rewards.py:length"]) == 0
