"""Keyed Gumbel-max sampling: exact distribution, and independence from the rest of the batch."""

import math

import torch

from rlhfkit.rollout.seeded import SeededSampling, filter_top_k_top_p, row_keys, uniforms


def test_uniforms_are_uniform_and_a_function_of_key_and_position():
    keys = row_keys(0, 3, torch.arange(64))
    u = uniforms(keys, 5, 4096)  # (64, 4096)
    assert u.min() > 0 and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert (hist - 0.1).abs().max() < 0.005
    assert torch.equal(uniforms(keys[10:12], 5, 4096), u[10:12])  # other rows do not matter
    assert not torch.equal(uniforms(keys, 6, 4096), u)  # the next position draws afresh
    assert len(set(row_keys(0, 3, torch.arange(1000)).tolist())) == 1000
    assert not torch.equal(row_keys(1, 3, torch.arange(4)), row_keys(0, 3, torch.arange(4)))
    assert not torch.equal(row_keys(0, 4, torch.arange(4)), row_keys(0, 3, torch.arange(4)))


def test_gumbel_argmax_samples_softmax_at_temperature():
    # 20000 rows with the same logits: token frequencies match softmax(logits / T) (chi-square).
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    T, rows = 0.7, 20000
    sampler = SeededSampling(row_keys(7, 0, torch.arange(rows)), prompt_length=3, temperature=T)
    tokens = sampler(torch.zeros(rows, 3, dtype=torch.long), logits.expand(rows, -1)).argmax(-1)
    counts = torch.bincount(tokens, minlength=5).float()
    expected = torch.softmax(logits / T, -1) * rows
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.5  # 4 degrees of freedom, p = 0.001


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_top_k_top_p(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # top_p 0.7: 0.5 < 0.7 so 0.3 is needed too; 0.8 >= 0.7 so 0.15 is dropped.
    assert torch.isinf(filter_top_k_top_p(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_top_k_top_p(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    assert not torch.isinf(filter_top_k_top_p(logits)).any()


def test_generate_with_keys_is_independent_of_the_batch(tiny_model, tiny_tokenizer):
    from rlhfkit.rollout import GenerationSettings, generate

    model, tok = tiny_model, tiny_tokenizer
    prompts = ["the cat sat", "a dog", "what is 1 + 2 ? the", "good"]
    settings = GenerationSettings(max_new_tokens=8, n=2)
    keys = row_keys(0, 0, torch.arange(8))
    whole = generate(model, tok, prompts, settings, row_keys=keys)
    halves = [generate(model, tok, prompts[:2], settings, row_keys=keys[:4]),
              generate(model, tok, prompts[2:], settings, row_keys=keys[4:])]
    assert whole.responses == halves[0].responses + halves[1].responses
    # The two samples of a prompt differ somewhere (they have different keys).
    assert any(whole.responses[2 * i] != whole.responses[2 * i + 1] for i in range(4))
    torch.manual_seed(123)  # the global RNG plays no part
    assert generate(model, tok, prompts, settings, row_keys=keys).responses == whole.responses
