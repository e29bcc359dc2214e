"""Folders as real checkpoints ship them, read by the real loading code: sharded safetensors with an
index, an EOS list in generation_config.json, added tokens, no chat template, a dtype in config.json.
"""

import json
from pathlib import Path

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.data.chat import render_prompt
from rlhfkit.data.tokenize import tokenize_prompts
from rlhfkit.models import load_causal_lm, load_critic, load_reward_model, load_tokenizer
from rlhfkit.models.families import build_family_model, build_family_tokenizer, save_family
from rlhfkit.models.loading import check_vocab_fits
from rlhfkit.rollout import eos_token_ids


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=0, rtol=0)


@pytest.mark.parametrize("head", ["lm", "score"])
def test_sharded_safetensors_with_an_index(tmp_path, head):
    whole = save_family("llama3", tmp_path / "whole", head=head, hidden_size=32)
    sharded = save_family("llama3", tmp_path / "sharded", head=head, max_shard_size="20KB", hidden_size=32)
    index = json.loads((Path(sharded) / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (Path(sharded) / "model.safetensors").exists()
    if head == "lm":
        _same_weights(load_causal_lm(whole), load_causal_lm(sharded))
    else:
        _same_weights(load_reward_model(whole), load_reward_model(sharded))
        _same_weights(load_critic(whole), load_critic(sharded))


def test_generation_config_with_an_eos_list(tmp_path):
    path = Path(save_family("gemma2", tmp_path / "gemma2"))
    saved = json.loads((path / "generation_config.json").read_text())
    assert isinstance(saved["eos_token_id"], list) and len(saved["eos_token_id"]) == 2
    tok, model = load_tokenizer(path), load_causal_lm(path)
    assert eos_token_ids(model, tok) == sorted(saved["eos_token_id"])


def test_tokenizer_with_added_tokens(tmp_path):
    tok = build_family_tokenizer("qwen2")
    tok.add_tokens(["<tool_call>", "</tool_call>"], special_tokens=True)
    tok.add_tokens(["catdog"])
    model = build_family_model("qwen2", tok)
    model.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    loaded = load_tokenizer(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab()
    ids = loaded("<tool_call>catdog</tool_call>", add_special_tokens=False)["input_ids"]
    assert ids == [tok.convert_tokens_to_ids(t) for t in ("<tool_call>", "catdog", "</tool_call>")]
    check_vocab_fits(load_causal_lm(tmp_path), loaded, tmp_path)


def test_tokenizer_larger_than_the_model_is_refused(tmp_path):
    tok = build_family_tokenizer("mistral")
    model = build_family_model("mistral", tok)
    tok.add_tokens([f"<new_{i}>" for i in range(4)])  # added after the model was sized: ids past its embeddings
    with pytest.raises(ConfigError, match="resize"):
        check_vocab_fits(model, tok, tmp_path)


def test_folder_without_a_chat_template(tmp_path):
    path = save_family("opt", tmp_path / "opt")
    assert "chat_template" not in json.loads((Path(path) / "tokenizer_config.json").read_text())
    assert not list(Path(path).glob("chat_template.*"))
    tok = load_tokenizer(path)
    chat = [{"role": "user", "content": "say hi"}]
    assert render_prompt(tok, chat) == "user: say hi\nassistant:"
    rows, _ = tokenize_prompts([{"prompt": "say hi"}], tok, 16)
    assert rows[0]["prompt_ids"][0] == tok.bos_token_id and rows[0]["prompt_ids"].count(tok.bos_token_id) == 1


@pytest.mark.parametrize("key", ["torch_dtype", "dtype"])
def test_dtype_in_the_config(tmp_path, key):
    path = Path(save_family("phi3", tmp_path / "phi3"))
    config = json.loads((path / "config.json").read_text())
    config.pop("torch_dtype", None)
    config.pop("dtype", None)
    config[key] = "bfloat16"
    (path / "config.json").write_text(json.dumps(config))
    assert next(load_causal_lm(path, dtype="auto").parameters()).dtype == torch.bfloat16
    assert next(load_causal_lm(path).parameters()).dtype == torch.float32  # the default stays float32
    assert next(load_critic(path, dtype="auto").parameters()).dtype == torch.bfloat16
