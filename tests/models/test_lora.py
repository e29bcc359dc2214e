"""LoRA: the reference is the same model with adapters off; saving merges without touching the base."""

import copy

import pytest
import torch

from rlhfkit.models import (adapters_disabled, apply_lora, is_lora, load_causal_lm, load_critic, load_scalar_model,
                            position_ids_from_mask, response_logprobs, save_model)
from tests.models.padding import pad_batch

PROMPTS = [[4, 5, 6], [7]]
RESPONSES = [[8, 9, 1], [10, 11, 12, 13]]


def _logprobs(model, temperature=1.0):
    ids, mask, resp_mask = pad_batch(PROMPTS, RESPONSES, extra_left=1)
    with torch.no_grad():
        lp = response_logprobs(model, ids, mask, position_ids_from_mask(mask), resp_mask.shape[1],
                               temperature=temperature)
    return lp * resp_mask


def _perturb_adapters(model, seed=0):
    """LoRA B starts at zero (adapter = no-op); give every adapter weight random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@pytest.fixture()
def lora_policy(tiny_model):
    return apply_lora(copy.deepcopy(tiny_model), r=4, alpha=8)


def test_only_adapters_train_and_start_as_the_base(lora_policy, tiny_model):
    trainable = [n for n, p in lora_policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert is_lora(lora_policy) and not is_lora(tiny_model)
    torch.testing.assert_close(_logprobs(lora_policy), _logprobs(tiny_model), atol=1e-6, rtol=0)


def test_reference_logprobs_with_adapters_disabled_equal_base(lora_policy, tiny_model):
    base = _logprobs(tiny_model, temperature=0.8)
    _perturb_adapters(lora_policy)
    assert (_logprobs(lora_policy, 0.8) - base).abs().max() > 1e-2  # the adapters now matter
    with adapters_disabled(lora_policy):
        torch.testing.assert_close(_logprobs(lora_policy, 0.8), base, atol=1e-6, rtol=0)
    assert (_logprobs(lora_policy, 0.8) - base).abs().max() > 1e-2  # and are back on afterwards
    _perturb_adapters(lora_policy, seed=1)  # changed again (as by an optimizer step)
    with adapters_disabled(lora_policy):
        torch.testing.assert_close(_logprobs(lora_policy, 0.8), base, atol=1e-6, rtol=0)


def test_adapters_disabled_refuses_a_plain_model(tiny_model):
    with pytest.raises(ValueError, match="needs a LoRA"), adapters_disabled(tiny_model):
        pass


def test_saved_lora_policy_is_merged_and_base_untouched(tmp_path, lora_policy, tiny_model, tiny_tokenizer):
    _perturb_adapters(lora_policy)
    expected = _logprobs(lora_policy)
    save_model(lora_policy, tiny_tokenizer, tmp_path / "merged")
    merged = load_causal_lm(tmp_path / "merged")  # plain transformers model, no peft
    assert not is_lora(merged)
    torch.testing.assert_close(_logprobs(merged), expected, atol=1e-5, rtol=0)
    with adapters_disabled(lora_policy):  # saving did not merge into the base weights
        torch.testing.assert_close(_logprobs(lora_policy), _logprobs(tiny_model), atol=1e-6, rtol=0)


def test_lora_critic_trains_head_and_saves_as_plain_classifier(tmp_path, tiny_model_dir):
    critic = apply_lora(load_critic(tiny_model_dir), r=4, alpha=8)
    trainable = [n for n, p in critic.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any(".score." in n for n in trainable)
    _perturb_adapters(critic)
    with torch.no_grad():
        critic.head.weight.fill_(0.1)
    ids, mask, _ = pad_batch(PROMPTS, RESPONSES)
    with torch.no_grad():
        values = critic.values(ids, mask)
        with adapters_disabled(critic):
            assert (critic.values(ids, mask) - values).abs().max() > 1e-4
    critic.save_pretrained(tmp_path / "critic")
    back = load_scalar_model(tmp_path / "critic")
    with torch.no_grad():
        torch.testing.assert_close(back.values(ids, mask), values, atol=1e-5, rtol=0)
