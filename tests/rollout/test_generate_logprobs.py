"""Policy logprobs from generate's own logits: equal to a full forward's, and used only where exact."""

import copy

import pytest
import torch

from rlhfkit.models import position_ids_from_mask, response_logprobs
from rlhfkit.rollout import GenerationSettings, generate, make_experience
from rlhfkit.rollout import collect
from tests.rollout.test_generation import eos_biased

PROMPTS = ["the cat sat on", "what is 1 + 2 ?", "a dog"]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_generate_logprobs_equal_a_forward(tiny_model, tiny_tokenizer, temperature):
    # Left-padded prompts of different lengths, some responses ending by EOS: the decode steps'
    # logits must give the logprobs a full forward over [prompt | response] gives.
    policy = eos_biased(tiny_model, tiny_tokenizer, bias=1.5)
    torch.manual_seed(0)
    gen = generate(policy, tiny_tokenizer, PROMPTS, GenerationSettings(max_new_tokens=6, n=3, temperature=temperature),
                   return_logprobs=True)
    assert gen.logprobs.shape == gen.response_ids.shape and gen.logprobs.dtype == torch.float32
    assert 0 < int(gen.eos.sum()) < len(gen.eos)  # both kinds of ending are covered
    ids = torch.cat([gen.prompt_ids, gen.response_ids], 1)
    mask = torch.cat([gen.prompt_mask, gen.response_mask.long()], 1)
    with torch.no_grad():
        ref = response_logprobs(policy, ids, mask, position_ids_from_mask(mask), gen.response_ids.shape[1],
                                temperature=temperature)
    m = gen.response_mask
    torch.testing.assert_close(gen.logprobs * m, ref * m, atol=1e-5, rtol=0)
    assert generate(policy, tiny_tokenizer, PROMPTS, GenerationSettings(max_new_tokens=2)).logprobs is None


def test_make_experience_uses_generate_only_where_exact(tiny_model, tiny_tokenizer, monkeypatch):
    from rlhfkit.rollout import engine as E

    settings = GenerationSettings(max_new_tokens=4, n=2, temperature=0.8)
    assert E.HFEngine(tiny_model, tiny_tokenizer)._logprobs_exact(6, settings)
    bf16 = copy.deepcopy(tiny_model).to(torch.bfloat16)
    assert not E.HFEngine(bf16, tiny_tokenizer)._logprobs_exact(6, settings)
    monkeypatch.setattr(E, "GENERATE_LOGITS_BUDGET", 6 * 4 * tiny_model.config.vocab_size * 4 - 1)
    assert not E.HFEngine(tiny_model, tiny_tokenizer)._logprobs_exact(6, settings)  # the held logits would not fit
    monkeypatch.undo()

    # Either way the experience's logprobs are the same numbers (to float rounding).
    calls = []
    real = collect.response_logprobs
    monkeypatch.setattr(collect, "response_logprobs", lambda model, *a, **k: calls.append(model) or real(model, *a, **k))
    out = {}
    for budget in (E.GENERATE_LOGITS_BUDGET, 0):
        monkeypatch.setattr(E, "GENERATE_LOGITS_BUDGET", budget)
        calls.clear()
        torch.manual_seed(1)
        out[budget] = make_experience(tiny_model, tiny_tokenizer, PROMPTS, settings)
        assert len(calls) == (0 if budget else 1)  # no policy forward when generate's logits are used
    a, b = out.values()
    assert torch.equal(a.response_ids, b.response_ids)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
    assert torch.equal(a.logprobs == 0, a.response_mask == 0)  # masked positions are exact zeros
