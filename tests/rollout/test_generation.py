"""Sampling: layout of n samples, left-padded prompts, EOS handling (pad == EOS), stop strings."""

import copy

import pytest
import torch

from rlhfkit.rollout import GenerationSettings, generate
from tests.models.padding import build_tiny_gpt2

PROMPTS = ["the cat sat on", "what is 1 + 2 ?", "a dog"]


def eos_biased(model, tokenizer, bias=3.0):
    """A copy of `model` whose LM head adds `bias` to the EOS logit, so that some responses end
    by EOS and some by length."""
    out = copy.deepcopy(model)
    head = torch.nn.Linear(out.lm_head.in_features, out.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(out.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = bias
    out.lm_head = head
    return out


@pytest.fixture(scope="module")
def pad_is_eos(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = tok.eos_token
    assert tok.pad_token_id == tok.eos_token_id
    return tok


def test_settings_validation():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GenerationSettings(max_new_tokens=4, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(max_new_tokens=4, top_p=1.5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    assert GenerationSettings(max_new_tokens=4, stop_strings="x").stop_strings == ("x",)


def test_n_samples_in_consecutive_groups_with_left_padded_prompts(tiny_model, tiny_tokenizer):
    torch.manual_seed(0)
    out = generate(tiny_model, tiny_tokenizer, PROMPTS, GenerationSettings(max_new_tokens=5, n=3))
    enc = tiny_tokenizer(PROMPTS, padding=True, return_tensors="pt")
    assert out.prompt_ids.shape == (9, enc["input_ids"].shape[1])
    assert torch.equal(out.prompt_ids, enc["input_ids"].repeat_interleave(3, 0))
    assert torch.equal(out.prompt_mask, enc["attention_mask"].repeat_interleave(3, 0))
    assert out.prompts == [p for p in PROMPTS for _ in range(3)]
    assert out.response_ids.shape == out.response_mask.shape and out.response_ids.shape[0] == 9
    assert out.response_mask.dtype == torch.float32 and len(out.responses) == 9
    # Samples of one prompt differ (sampling, not n copies of one answer).
    assert len({tuple(r.tolist()) for r in out.response_ids[:3]}) > 1


def test_pad_equal_eos_keeps_eos_in_mask_and_nothing_after(tiny_model, pad_is_eos):
    model = eos_biased(tiny_model, pad_is_eos)
    torch.manual_seed(0)
    out = generate(model, pad_is_eos, PROMPTS, GenerationSettings(max_new_tokens=6, n=4))
    eos_id = pad_is_eos.eos_token_id
    assert out.eos.any() and (~out.eos).any(), "the fixture should give both endings; retune the bias"
    for ids, mask, ended, text in zip(out.response_ids, out.response_mask, out.eos, out.responses):
        length = int(mask.sum())
        assert torch.all(mask[:length] == 1) and torch.all(mask[length:] == 0)  # one contiguous run
        body = ids[:length].tolist()
        if ended:
            assert body[-1] == eos_id and eos_id not in body[:-1]  # EOS kept, it is the first one
        else:
            assert length == 6 and eos_id not in body  # cut at max_new_tokens
        assert "<eos>" not in text and "<pad>" not in text
        assert text == pad_is_eos.decode(body, skip_special_tokens=True)
    assert out.response_ids.shape[1] == int(out.response_mask.sum(1).max())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_batch_equals_each_prompt_alone(arch, tiny_model, tiny_tokenizer):
    """Left padding and mask-derived positions: a padded batch decodes as each prompt alone."""
    model = tiny_model if arch == "llama" else build_tiny_gpt2(tiny_tokenizer)
    settings = GenerationSettings(max_new_tokens=6, do_sample=False)
    batch = generate(model, tiny_tokenizer, PROMPTS, settings)
    for i, prompt in enumerate(PROMPTS):
        alone = generate(model, tiny_tokenizer, [prompt], settings)
        k = int(alone.response_mask.sum())
        assert batch.response_ids[i, :k].tolist() == alone.response_ids[0, :k].tolist()
        assert batch.responses[i] == alone.responses[0]


def test_stop_string_truncates_after_it(tiny_model, tiny_tokenizer):
    settings = GenerationSettings(max_new_tokens=10, n=2)
    torch.manual_seed(3)
    free = generate(tiny_model, tiny_tokenizer, PROMPTS, settings)
    # Stop at a word that row 0 produced in the middle of its response.
    words = free.responses[0].split()
    stop = words[len(words) // 2]
    torch.manual_seed(3)
    out = generate(tiny_model, tiny_tokenizer, PROMPTS, GenerationSettings(max_new_tokens=10, n=2,
                                                                           stop_strings=(stop,)))
    assert out.stopped[0] and out.eos[0]
    for i, text in enumerate(out.responses):
        length = int(out.response_mask[i].sum())
        # Same random draws: identical tokens up to where the row stopped.
        assert out.response_ids[i, :length].tolist() == free.response_ids[i, :length].tolist()
        if out.stopped[i]:
            assert text.endswith(stop) and stop not in text[:-len(stop)]
            prefix = tiny_tokenizer.decode(out.response_ids[i, :length - 1].tolist(), skip_special_tokens=True)
            assert stop not in prefix  # the last kept token is the one that completed the stop string
        else:
            assert stop not in text


def test_saved_generation_config_is_ignored(tiny_model, tiny_tokenizer):
    """A checkpoint's generation config (here: EOS suppressed) must not change what we sample."""
    model = eos_biased(tiny_model, tiny_tokenizer, bias=6.0)
    model.generation_config.suppress_tokens = [tiny_tokenizer.eos_token_id]
    model.generation_config.repetition_penalty = 5.0
    torch.manual_seed(0)
    out = generate(model, tiny_tokenizer, PROMPTS, GenerationSettings(max_new_tokens=4, n=2))
    assert out.eos.any()
    assert model.generation_config.suppress_tokens == [tiny_tokenizer.eos_token_id]  # restored


def test_generate_restores_training_mode_and_rejects_bad_prompts(tiny_model, tiny_tokenizer):
    model = copy.deepcopy(tiny_model).train()
    generate(model, tiny_tokenizer, ["the cat"], GenerationSettings(max_new_tokens=2))
    assert model.training
    with pytest.raises(ValueError, match="non-empty list of strings"):
        generate(model, tiny_tokenizer, "the cat", GenerationSettings(max_new_tokens=2))
    with pytest.raises(ValueError, match="prompt 1 .* has no tokens"):
        generate(model, tiny_tokenizer, ["the cat", ""], GenerationSettings(max_new_tokens=2))


def test_pretokenized_prompt_ids_are_used_as_given(tiny_model, tiny_tokenizer):
    ids = [[2] + tiny_tokenizer(p)["input_ids"] for p in PROMPTS]  # with a BOS the texts would not give
    settings = GenerationSettings(max_new_tokens=3, do_sample=False, n=2)
    out = generate(tiny_model, tiny_tokenizer, PROMPTS, settings, prompt_ids=ids)
    for i, row in enumerate(ids):
        valid = out.prompt_ids[2 * i][out.prompt_mask[2 * i].bool()].tolist()
        assert valid == row and int(out.prompt_mask[2 * i].sum()) == len(row)
    with pytest.raises(ValueError, match="2 prompt_ids for 3 prompts"):
        generate(tiny_model, tiny_tokenizer, PROMPTS, settings, prompt_ids=ids[:2])
