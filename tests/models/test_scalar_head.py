"""Critic / reward model: explicit masks, the score at the last valid token, checkpoint formats."""

import json

import pytest
import torch

from rlhfkit.algos import last_valid_index as last_index_from_mask
from rlhfkit.models import (ScalarHeadModel, load_critic, load_reward_model, load_scalar_model,
                            position_ids_from_mask)
from tests.models.padding import pad_batch

SEQS = [[4, 5, 6, 7, 1], [8, 9], [10, 11, 12, 1]]


@pytest.fixture(scope="module")
def reward_model(tiny_reward_model_dir):
    return load_reward_model(tiny_reward_model_dir)


def _solo_values(model, seq):
    with torch.no_grad():
        return model.values(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))[0]


def test_last_index_from_mask():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 1, 0]])
    assert last_index_from_mask(mask).tolist() == [2, 3, 2]


@pytest.mark.parametrize("fill", [None, 1, 9])
def test_reward_score_is_invariant_to_padding(reward_model, fill):
    """Left and right padding (whatever ids fill it, EOS included) do not change a sequence's score."""
    alone = torch.stack([_solo_values(reward_model, s)[-1] for s in SEQS])
    # Split each sequence into a "prompt" (left-padded) and a "response" (right-padded) part.
    ids, mask, _ = pad_batch([s[:2] for s in SEQS], [s[2:] for s in SEQS], prompt_fill=fill, response_fill=fill,
                             extra_left=2, extra_right=3)
    with torch.no_grad():
        scores = reward_model.score(ids, mask, position_ids_from_mask(mask), last_index_from_mask(mask))
    torch.testing.assert_close(scores, alone, atol=1e-5, rtol=0)


def test_score_is_read_at_each_rows_last_valid_token(reward_model):
    ids, mask, _ = pad_batch([s[:2] for s in SEQS], [s[2:] for s in SEQS], extra_left=1, extra_right=2)
    last = last_index_from_mask(mask)
    with torch.no_grad():
        values = reward_model.values(ids, mask, position_ids_from_mask(mask))  # (B, T)
        scores = reward_model.score(ids, mask, position_ids_from_mask(mask), last)
    # Prompt columns: 1 extra + 2 tokens; row i's last token sits at 3 + len(response) - 1.
    assert last.tolist() == [3 + len(s) - 2 - 1 for s in SEQS]
    for i, seq in enumerate(SEQS):
        torch.testing.assert_close(scores[i], values[i, last[i]], atol=1e-6, rtol=0)
        torch.testing.assert_close(scores[i], _solo_values(reward_model, seq)[-1], atol=1e-5, rtol=0)
        # The per-token values of the padded row are those of the row alone, position by position.
        valid = mask[i].bool()
        torch.testing.assert_close(values[i][valid], _solo_values(reward_model, seq), atol=1e-5, rtol=0)


def test_hub_style_checkpoint_matches_hf_pooled_output_without_padding(tiny_reward_model_dir, reward_model):
    """With no padding HF's own pooled output is right; ours must agree with it there."""
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(str(tiny_reward_model_dir)).eval()
    ids = torch.tensor([[4, 5, 6, 7], [8, 9, 10, 11]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        ours = reward_model.score(ids, mask)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert not reward_model.training and not any(p.requires_grad for p in reward_model.parameters())
    assert reward_model.reward_mean is None


def test_our_folder_round_trip_with_reward_stats(tmp_path, reward_model, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    reward_model.reward_mean, reward_model.reward_std = 0.5, 2.0
    try:
        reward_model.save_pretrained(tmp_path / "rm", tokenizer=tiny_tokenizer)
    finally:
        reward_model.reward_mean = reward_model.reward_std = None
    stats = json.loads((tmp_path / "rm" / "rlhfkit_reward.json").read_text())
    assert stats == {"reward_mean": 0.5, "reward_std": 2.0}
    back = load_scalar_model(tmp_path / "rm")
    assert (back.reward_mean, back.reward_std) == (0.5, 2.0)
    torch.testing.assert_close(back.normalize(torch.tensor([2.5])), torch.tensor([1.0]))
    ids = torch.tensor([[4, 5, 6, 1]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(back.values(ids, mask), reward_model.values(ids, mask))
    # Plain transformers reads it too.
    plain = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "rm"))
    assert plain.config.num_labels == 1


def test_critic_from_policy_starts_at_zero_and_from_reward_model_keeps_head(tiny_model_dir, tiny_reward_model_dir,
                                                                            reward_model):
    ids, mask, _ = pad_batch([s[:2] for s in SEQS], [s[2:] for s in SEQS])
    critic = load_critic(tiny_model_dir)
    assert all(p.requires_grad for p in critic.parameters())
    with torch.no_grad():
        assert torch.count_nonzero(critic.values(ids, mask)) == 0
    from_rm = load_critic(tiny_reward_model_dir)
    with torch.no_grad():
        torch.testing.assert_close(from_rm.values(ids, mask), reward_model.values(ids, mask))
    # The backbone is the policy's: the critic's hidden states equal the causal LM's last hidden states.
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.no_grad():
        expected = lm(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                      output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(critic.hidden_states(ids, mask), expected, atol=1e-5, rtol=0)


def test_clear_errors_for_wrong_checkpoints(tmp_path, tiny_model_dir, tiny_tokenizer):
    from rlhfkit.models.tiny import build_tiny_classifier

    with pytest.raises(ValueError, match="no trained scalar head"):
        load_reward_model(tiny_model_dir)
    two = build_tiny_classifier(tiny_tokenizer, num_labels=2, hidden_size=32, num_layers=1, num_heads=4)
    two.save_pretrained(str(tmp_path / "two"))
    with pytest.raises(ValueError, match="num_labels=2"):
        load_critic(tmp_path / "two")

    class NoHead(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="no scalar head named"):
        ScalarHeadModel(NoHead())
