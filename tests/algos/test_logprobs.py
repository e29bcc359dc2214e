import pytest
import torch

from rlhfkit.algos import entropy_from_logits, logprobs_from_logits


def _data(dtype=torch.float32, shape=(3, 5, 11), seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    return logits, labels


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_logprobs_match_log_softmax_values_and_gradients(chunk_size):
    logits, labels = _data(torch.float64)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    ours = logprobs_from_logits(a, labels, chunk_size=chunk_size)
    ref = torch.log_softmax(b, -1).gather(-1, labels[..., None]).squeeze(-1)
    assert torch.allclose(ours, ref, atol=1e-12)
    weights = torch.randn(ours.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
def test_entropy_matches_definition_values_and_gradients(chunk_size):
    logits, _ = _data(torch.float64)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    ours = entropy_from_logits(a, chunk_size=chunk_size)
    logp = torch.log_softmax(b, -1)
    ref = -(logp.exp() * logp).sum(-1)
    assert torch.allclose(ours, ref, atol=1e-12)
    weights = torch.randn(ours.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


def test_gradcheck():
    logits, labels = _data(torch.float64, shape=(2, 3, 5))
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: logprobs_from_logits(z, labels, chunk_size=2), (logits,))
    assert torch.autograd.gradcheck(lambda z: entropy_from_logits(z, chunk_size=2), (logits,))


def test_bfloat16_logits_are_computed_in_float32():
    logits, labels = _data(torch.bfloat16)
    lp = logprobs_from_logits(logits, labels)
    assert lp.dtype == torch.float32 and entropy_from_logits(logits).dtype == torch.float32
    ref = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    assert torch.allclose(lp, ref, atol=1e-6)
    x = logits.clone().requires_grad_(True)
    logprobs_from_logits(x, labels).sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(x.grad.float()).all()


def test_masked_vocabulary_gives_finite_entropy_and_gradient():
    logits = torch.tensor([[0.0, 1.0, float("-inf")]], requires_grad=True)
    h = entropy_from_logits(logits)
    p = torch.softmax(torch.tensor([0.0, 1.0]), -1)
    assert h.item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-6)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 2] == 0


def test_no_grad_and_shape_errors():
    logits, labels = _data()
    with torch.no_grad():
        assert logprobs_from_logits(logits, labels).shape == labels.shape
    with pytest.raises(ValueError, match="vocabulary dimension"):
        logprobs_from_logits(logits, labels[:, :-1])
