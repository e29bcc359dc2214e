"""logprobs_and_entropy: one pass equals the two separate functions at temperature T, values and gradients."""

import pytest
import torch

from rlhfkit.algos.logprobs import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits


def _data(dtype=torch.float64, shape=(3, 5, 11), seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    return logits, labels


def _weights(shape, seed):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("use", ["logprobs", "entropy", "both"])
def test_equals_separate_functions_on_tempered_logits(chunk_size, temperature, use):
    logits, labels = _data()
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    lp, ent = logprobs_and_entropy(a, labels, temperature=temperature, chunk_size=chunk_size)
    lp_ref, ent_ref = logprobs_from_logits(b / temperature, labels), entropy_from_logits(b / temperature)
    assert torch.allclose(lp, lp_ref, atol=1e-12) and torch.allclose(ent, ent_ref, atol=1e-12)
    w1, w2 = _weights(lp.shape, 1), _weights(lp.shape, 2)
    loss = {"logprobs": (lp * w1).sum(), "entropy": (ent * w2).sum(), "both": (lp * w1 + ent * w2).sum()}[use]
    ref = {"logprobs": (lp_ref * w1).sum(), "entropy": (ent_ref * w2).sum(),
           "both": (lp_ref * w1 + ent_ref * w2).sum()}[use]
    loss.backward()
    ref.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


def test_gradcheck_both_outputs():
    logits, labels = _data(shape=(2, 3, 5))
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: logprobs_and_entropy(z, labels, temperature=0.6, chunk_size=2), (x,))


def test_logged_entropy_leaves_the_logprob_gradient_unchanged():
    # The update logs the entropy (detached) when entropy_coef = 0: the gradient must be the
    # logprobs' alone, the same as computing no entropy at all.
    logits, labels = _data()
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    lp, ent = logprobs_and_entropy(a, labels, temperature=0.8)
    lp_only, none = logprobs_and_entropy(b, labels, temperature=0.8, with_entropy=False)
    assert none is None and torch.equal(lp, lp_only)
    w = _weights(lp.shape, 3)
    ((lp * w).sum() + 0 * float(ent.detach().sum())).backward()
    (lp_only * w).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_bfloat16_in_float32_and_masked_vocabulary_finite():
    logits, labels = _data(torch.bfloat16)
    lp, ent = logprobs_and_entropy(logits, labels)
    assert lp.dtype == ent.dtype == torch.float32
    ref = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    assert torch.allclose(lp, ref, atol=1e-5)
    masked = _data()[0].clone()
    masked[..., :3] = float("-inf")  # labels avoid the masked ids
    x = masked.requires_grad_(True)
    lp, ent = logprobs_and_entropy(x, torch.full(labels.shape, 5), temperature=0.5)
    (lp.sum() + ent.sum()).backward()
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all() and torch.isfinite(x.grad).all()


def test_bad_arguments():
    logits, labels = _data()
    with pytest.raises(ValueError, match="vocabulary dimension"):
        logprobs_and_entropy(logits, labels[:, :-1])
    with pytest.raises(ValueError, match="temperature"):
        logprobs_and_entropy(logits, labels, temperature=0.0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprob_gradient_through_a_float32_chunk_for_bfloat16_logits(temperature):
    # bf16 logits: the gradient is computed in a float32 chunk and written back in bf16 (the in-place
    # path is for logits already in the compute dtype); it equals the float64 reference to bf16 precision.
    logits, labels = _data(torch.bfloat16)
    x = logits.clone().requires_grad_(True)
    ref = logits.double().clone().requires_grad_(True)
    w = _weights(labels.shape, 4)
    lp, _ = logprobs_and_entropy(x, labels, temperature=temperature, chunk_size=4)
    (lp.double() * w).sum().backward()
    (torch.log_softmax(ref / temperature, -1).gather(-1, labels[..., None]).squeeze(-1) * w).sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert torch.allclose(x.grad.double(), ref.grad, atol=2e-2, rtol=2e-2)
    assert (x.grad.double() - ref.grad).abs().max() < 0.02 * ref.grad.abs().max()
