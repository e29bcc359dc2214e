"""make_experience: every quantity lines up with the tokens it is about."""

import copy

import pytest
import torch

from rlhfkit.models import adapters_disabled, apply_lora, load_critic, load_reward_model
from rlhfkit.rollout import Experience, FunctionScorer, GenerationSettings, RewardModelScorer, make_experience
from tests.models.padding import solo_logprobs
from tests.rollout.test_generation import eos_biased

PROMPTS = ["the cat sat on", "what is 1 + 2 ?", "a dog"]
ANSWERS = ["3", "3", "9"]
SETTINGS = GenerationSettings(max_new_tokens=6, n=2, temperature=0.7)


def _valid(exp, i):
    """(prompt ids, response ids) of row i without padding."""
    prompt = exp.prompt_ids[i][exp.prompt_mask[i].bool()].tolist()
    response = exp.response_ids[i][exp.response_mask[i].bool()].tolist()
    return prompt, response


@pytest.fixture(scope="module")
def policy(tiny_model, tiny_tokenizer):
    return eos_biased(tiny_model, tiny_tokenizer, bias=1.0)


@pytest.fixture(scope="module")
def critic(tiny_model_dir):
    model = load_critic(tiny_model_dir)
    with torch.no_grad():  # a non-zero head, so that misaligned values would show
        model.head.weight.copy_(torch.linspace(-1, 1, model.head.weight.numel()).view_as(model.head.weight))
    return model


@pytest.fixture(scope="module")
def exp(policy, tiny_tokenizer, tiny_model, critic):
    torch.manual_seed(0)
    return make_experience(policy, tiny_tokenizer, PROMPTS, SETTINGS, reference=tiny_model, critic=critic,
                           scorer=FunctionScorer(lambda p, r, answer: [float(len(x)) for x in r]),
                           fields={"answer": ANSWERS})


def test_layout_and_shapes(exp):
    N, P, R = 6, exp.prompt_length, exp.response_length
    assert exp.input_ids.shape == exp.attention_mask.shape == exp.position_ids.shape == (N, P + R)
    for name in ("logprobs", "ref_logprobs", "values"):
        assert getattr(exp, name).shape == exp.response_mask.shape == (N, R)
    assert exp.scores.shape == exp.eos.shape == (N,)
    assert torch.equal(exp.input_ids, torch.cat([exp.prompt_ids, exp.response_ids], 1))
    assert exp.group_size == 2 and exp.fields["answer"] == [a for a in ANSWERS for _ in range(2)]
    assert exp.eos.any() and (~exp.eos).any()  # both endings occur in this batch
    assert exp.scores.tolist() == [float(len(r)) for r in exp.responses]


def test_logprobs_equal_each_sequence_alone_at_the_sampling_temperature(exp, policy, tiny_model):
    for i in range(exp.batch_size):
        prompt, response = _valid(exp, i)
        k = len(response)
        torch.testing.assert_close(exp.logprobs[i, :k], solo_logprobs(policy, prompt, response, 0.7),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(exp.ref_logprobs[i, :k], solo_logprobs(tiny_model, prompt, response, 0.7),
                                   atol=1e-5, rtol=0)
        assert torch.all(exp.logprobs[i, k:] == 0) and torch.all(exp.values[i, k:] == 0)
    # Not the temperature-1 numbers.
    prompt, response = _valid(exp, 0)
    assert (exp.logprobs[0, :len(response)] - solo_logprobs(policy, prompt, response, 1.0)).abs().max() > 1e-3


def test_last_index_is_each_rows_last_valid_token(exp, tiny_tokenizer):
    for i in range(exp.batch_size):
        valid = exp.attention_mask[i].nonzero().flatten()
        assert int(exp.last_index[i]) == int(valid[-1])
        _, response = _valid(exp, i)
        assert int(exp.input_ids[i, exp.last_index[i]]) == response[-1]
        if exp.eos[i]:
            assert response[-1] == tiny_tokenizer.eos_token_id


def test_critic_values_are_the_state_before_each_response_token(exp, critic):
    for i in range(exp.batch_size):
        prompt, response = _valid(exp, i)
        seq = torch.tensor([prompt + response])
        with torch.no_grad():
            alone = critic.values(seq, torch.ones_like(seq))[0]  # (len,)
        # Response token t is predicted from position len(prompt) - 1 + t.
        expected = alone[len(prompt) - 1:len(prompt) - 1 + len(response)]
        torch.testing.assert_close(exp.values[i, :len(response)], expected, atol=1e-5, rtol=0)


def test_lora_reference_through_adapters_disabled(tiny_model, tiny_tokenizer):
    policy = apply_lora(copy.deepcopy(tiny_model), r=4, alpha=8)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    policy.train()
    # The context given as the function itself, or as a zero-argument factory.
    for ref_context in (adapters_disabled, lambda: adapters_disabled(policy)):
        torch.manual_seed(0)
        exp = make_experience(policy, tiny_tokenizer, PROMPTS, SETTINGS, ref_context=ref_context)
        assert policy.training  # mode restored
        for i in range(exp.batch_size):
            prompt, response = _valid(exp, i)
            k = len(response)
            torch.testing.assert_close(exp.ref_logprobs[i, :k], solo_logprobs(tiny_model, prompt, response, 0.7),
                                       atol=1e-5, rtol=0)
        assert (exp.logprobs - exp.ref_logprobs).abs().max() > 1e-2
    with pytest.raises(ValueError, match="not both"):
        make_experience(policy, tiny_tokenizer, PROMPTS, SETTINGS, reference=tiny_model,
                        ref_context=lambda: adapters_disabled(policy))


def test_reward_model_scorer_reuses_ids_and_matches_alone(exp, tiny_reward_model_dir, tiny_tokenizer):
    rm = load_reward_model(tiny_reward_model_dir)
    rm.reward_mean, rm.reward_std = 0.25, 0.5
    raw = RewardModelScorer(rm, tiny_tokenizer, normalize=False)(exp)
    normalized = RewardModelScorer(rm, tiny_tokenizer, policy_tokenizer=copy.deepcopy(tiny_tokenizer))(exp)
    torch.testing.assert_close(normalized, (raw - 0.25) / 0.5)
    for i in range(exp.batch_size):
        prompt, response = _valid(exp, i)
        seq = torch.tensor([prompt + response])
        torch.testing.assert_close(raw[i], rm.score(seq, torch.ones_like(seq))[0], atol=1e-5, rtol=0)


def test_reward_model_with_another_tokenizer_retokenizes_text(exp, tiny_tokenizer):
    from rlhfkit.models import ScalarHeadModel
    from rlhfkit.models.tiny import build_tiny_classifier, build_tiny_tokenizer
    from tests.conftest import TINY_CORPUS

    char_tok = build_tiny_tokenizer(TINY_CORPUS, level="char")
    rm = ScalarHeadModel(build_tiny_classifier(char_tok, hidden_size=32, num_layers=1, num_heads=4)).eval()
    scorer = RewardModelScorer(rm, char_tok, policy_tokenizer=tiny_tokenizer)
    assert not scorer.reuse_ids
    scores = scorer(exp)
    for i in (0, 1):
        ids = char_tok(exp.prompts[i])["input_ids"] + char_tok(exp.responses[i])["input_ids"]
        ids += [char_tok.eos_token_id] if exp.eos[i] else []
        seq = torch.tensor([ids])
        torch.testing.assert_close(scores[i], rm.score(seq, torch.ones_like(seq))[0], atol=1e-5, rtol=0)


def test_fields_must_have_one_value_per_prompt(policy, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"fields\['answer'\] has 2 entries for 3 prompts"):
        make_experience(policy, tiny_tokenizer, PROMPTS, SETTINGS, fields={"answer": ["1", "2"]})


def test_select_and_minibatches(exp):
    part = exp.select([5, 0])
    assert torch.equal(part.input_ids, exp.input_ids[[5, 0]])
    assert part.responses == [exp.responses[5], exp.responses[0]]
    assert part.fields["answer"] == [exp.fields["answer"][5], exp.fields["answer"][0]]
    assert part.group_size == 1 and exp.select(slice(2, 6)).group_size == 2
    assert torch.equal(exp.select(exp.eos).eos, exp.eos[exp.eos])

    batches = list(exp.minibatches(4, shuffle_generator=torch.Generator().manual_seed(0)))
    assert [b.batch_size for b in batches] == [4, 2]
    seen = torch.cat([b.scores for b in batches]).sort().values
    assert torch.equal(seen, exp.scores.sort().values)  # every row once
    assert all(isinstance(b, Experience) and b.logprobs.shape[0] == b.batch_size for b in batches)
    moved = exp.to("cpu")
    assert moved is not exp and torch.equal(moved.input_ids, exp.input_ids)


def test_forward_batch_size_changes_nothing(exp, policy, tiny_tokenizer, tiny_model, critic):
    torch.manual_seed(0)
    chunked = make_experience(policy, tiny_tokenizer, PROMPTS, SETTINGS, reference=tiny_model, critic=critic,
                              fields={"answer": ANSWERS}, forward_batch_size=4)
    assert torch.equal(chunked.response_ids, exp.response_ids)
    for name in ("logprobs", "ref_logprobs", "values"):
        torch.testing.assert_close(getattr(chunked, name), getattr(exp, name), atol=1e-6, rtol=0)
