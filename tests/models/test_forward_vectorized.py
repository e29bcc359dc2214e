"""response_logprobs runs over the whole batch at once: it equals a row-by-row loop, in values and gradients."""

import copy

import pytest
import torch

from rlhfkit.algos.logprobs import entropy_from_logits, logprobs_from_logits
from rlhfkit.models import position_ids_from_mask, response_logits, response_logprobs
from tests.models.padding import pad_batch

PROMPTS = [[4, 5, 6, 7, 8], [9, 10], [11, 12, 13]]
RESPONSES = [[14, 15, 1], [16, 17, 18, 19, 20, 21], [22, 1]]


def _row_loop(model, ids, mask, pos, R, temperature):
    """The reference: one row's (R, V) logits at a time, as the loop before vectorizing did."""
    logits = response_logits(model, ids, mask, pos, R)
    lp, ent = [], []
    for b in range(ids.shape[0]):
        row = logits[b, :-1] / temperature
        lp.append(logprobs_from_logits(row, ids[b, -R:]))
        ent.append(entropy_from_logits(row))
    return torch.stack(lp), torch.stack(ent)


def _grads(model):
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("entropy_in_loss", [False, True])
def test_vectorized_equals_row_loop(tiny_model, temperature, entropy_in_loss):
    ids, mask, resp_mask = pad_batch(PROMPTS, RESPONSES)
    pos = position_ids_from_mask(mask)
    R = resp_mask.shape[1]
    a, b = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    lp, ent = response_logprobs(a, ids, mask, pos, R, temperature=temperature, return_entropy=True)
    lp_ref, ent_ref = _row_loop(b, ids, mask, pos, R, temperature)
    assert torch.allclose(lp * resp_mask, lp_ref * resp_mask, atol=1e-6)
    assert torch.allclose(ent * resp_mask, ent_ref * resp_mask, atol=1e-6)
    w = torch.linspace(-1, 1, lp.numel()).view_as(lp) * resp_mask
    ((lp * w).sum() + (0.1 * (ent * resp_mask).sum() if entropy_in_loss else 0)).backward()
    ((lp_ref * w).sum() + (0.1 * (ent_ref * resp_mask).sum() if entropy_in_loss else 0)).backward()
    for ga, gb in zip(_grads(a), _grads(b), strict=True):
        assert torch.allclose(ga, gb, atol=1e-6)


def test_logged_entropy_changes_no_gradient(tiny_model):
    # entropy_coef = 0: the update asks for the entropy only to log it; the loss and the gradient
    # must be those of the logprobs alone.
    ids, mask, resp_mask = pad_batch(PROMPTS, RESPONSES)
    pos = position_ids_from_mask(mask)
    R = resp_mask.shape[1]
    a, b = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    lp, ent = response_logprobs(a, ids, mask, pos, R, temperature=0.9, return_entropy=True)
    lp_only = response_logprobs(b, ids, mask, pos, R, temperature=0.9)
    assert torch.equal(lp, lp_only) and ent.requires_grad
    (lp * resp_mask).sum().backward()
    (lp_only * resp_mask).sum().backward()
    for ga, gb in zip(_grads(a), _grads(b), strict=True):
        assert torch.equal(ga, gb)
