"""Masked forward passes: padded batches give the same logprobs as unpadded sequences."""

import pytest
import torch

from rlhfkit.models import position_ids_from_mask, response_logits, response_logprobs
from tests.models.padding import build_tiny_gpt2, pad_batch, solo_logprobs

# Prompts of different lengths, responses of different lengths (two end in EOS = 1).
PROMPTS = [[4, 5, 6, 7, 8], [9, 10], [11, 12, 13]]
RESPONSES = [[14, 15, 1], [16, 17, 18, 19, 20, 21], [22, 1]]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def any_model(request, tiny_model, tiny_tokenizer):
    """Llama (RoPE: shift-invariant) and GPT-2 (absolute positions: wrong position ids show)."""
    return tiny_model if request.param == "llama" else build_tiny_gpt2(tiny_tokenizer)


def test_position_ids_hand_example():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0]])
    expected = torch.tensor([[0, 0, 0, 1, 2, 3, 3], [0, 1, 2, 2, 2, 2, 2]])
    assert torch.equal(position_ids_from_mask(mask), expected)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_batched_padded_logprobs_equal_unpadded(any_model, temperature):
    ids, mask, resp_mask = pad_batch(PROMPTS, RESPONSES, extra_left=1, extra_right=2)
    with torch.no_grad():
        logprobs = response_logprobs(any_model, ids, mask, position_ids_from_mask(mask), resp_mask.shape[1],
                                     temperature=temperature)
    assert logprobs.shape == resp_mask.shape and logprobs.dtype == torch.float32
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        torch.testing.assert_close(logprobs[i, :len(r)], solo_logprobs(any_model, p, r, temperature),
                                   atol=1e-5, rtol=0)


def test_padding_ids_do_not_matter(any_model):
    """Real tokens in the padding slots change nothing: the masks decide, never the pad id."""
    outs = []
    for fill in (None, 7, 1):
        ids, mask, resp_mask = pad_batch(PROMPTS, RESPONSES, prompt_fill=fill, response_fill=fill, extra_left=2)
        with torch.no_grad():
            lp = response_logprobs(any_model, ids, mask, position_ids_from_mask(mask), resp_mask.shape[1])
        outs.append(lp * resp_mask)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(outs[0], outs[2], atol=1e-5, rtol=0)


def test_temperature_divides_logits_and_entropy_matches(tiny_model):
    ids, mask, resp_mask = pad_batch(PROMPTS, RESPONSES)
    pos = position_ids_from_mask(mask)
    R = resp_mask.shape[1]
    with torch.no_grad():
        lp_t, ent_t = response_logprobs(tiny_model, ids, mask, pos, R, temperature=0.5, return_entropy=True)
        lp_1 = response_logprobs(tiny_model, ids, mask, pos, R, temperature=1.0)
        logits = tiny_model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -R - 1:-1] / 0.5
    logp = torch.log_softmax(logits, -1)
    torch.testing.assert_close(lp_t, logp.gather(-1, ids[:, -R:, None]).squeeze(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_t, -(logp.exp() * logp).sum(-1), atol=1e-5, rtol=0)
    assert (lp_t - lp_1).abs().max() > 1e-3  # the temperature really changes the numbers


def test_only_needed_logits_and_fallback_without_logits_to_keep(tiny_model):
    """The LM head sees R + 1 positions; a model without `logits_to_keep` gets the same answer."""

    class NoKeep(torch.nn.Module):  # forward without a logits_to_keep keyword
        def __init__(self, model):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask, position_ids, use_cache=False):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    ids, mask, resp_mask = pad_batch(PROMPTS, RESPONSES)
    pos, R = position_ids_from_mask(mask), resp_mask.shape[1]
    with torch.no_grad():
        kept = response_logits(tiny_model, ids, mask, pos, R)
        full = response_logits(NoKeep(tiny_model), ids, mask, pos, R)
        lp_kept = response_logprobs(tiny_model, ids, mask, pos, R)
        lp_full = response_logprobs(NoKeep(tiny_model), ids, mask, pos, R)
    assert kept.shape == (len(PROMPTS), R + 1, tiny_model.config.vocab_size)
    torch.testing.assert_close(kept, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(lp_kept, lp_full, atol=1e-6, rtol=0)


def test_gradients_flow_and_bad_arguments(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model).train()
    ids, mask, resp_mask = pad_batch(PROMPTS, RESPONSES)
    pos = position_ids_from_mask(mask)
    lp = response_logprobs(model, ids, mask, pos, resp_mask.shape[1], temperature=0.7)
    (lp * resp_mask).sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="response_length"):
        response_logprobs(model, ids, mask, pos, ids.shape[1])
    with pytest.raises(ValueError, match="temperature"):
        response_logprobs(model, ids, mask, pos, 2, temperature=0.0)
