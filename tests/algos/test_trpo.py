"""TRPO pieces: conjugate gradient, flat parameter vectors, the KL and surrogate, Fisher-vector
products against an explicit autograd Hessian, and the trust-region step with its line search.

The toy policy is a linear softmax policy: logits = X W^T + b over a vocabulary of 5, on a (2, 4)
batch of "tokens" whose last position in row 1 is padding; float64 so tolerances can be tight.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.algos import (
    conjugate_gradient,
    fisher_vector_product,
    flat_grad,
    flat_params,
    kl_divergence,
    mean_kl_old_new,
    set_flat_params,
    surrogate_advantage,
    trpo_step,
)

F64 = torch.float64
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=F64)  # (2, 4)


def linear_policy(seed: int = 0, scale: float = 1.0, d: int = 3, vocab: int = 5, garbage: bool = True):
    """Params, closures and data of a linear softmax policy on MASK; padding holds NaN when `garbage`."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*MASK.shape, d, generator=gen, dtype=F64)  # (2, 4, d) features of each state
    w = (scale * torch.randn(vocab, d, generator=gen, dtype=F64)).requires_grad_()
    b = torch.zeros(vocab, dtype=F64).requires_grad_()

    def logits():
        return x @ w.T + b  # (2, 4, V)

    with torch.no_grad():
        old_logits = logits().clone()
    tokens = torch.multinomial(torch.softmax(old_logits, -1).reshape(-1, vocab), 1, generator=gen).view(MASK.shape)
    advantages = torch.randn(MASK.shape, generator=gen, dtype=F64)
    old_logprobs = torch.log_softmax(old_logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    if garbage:  # padding must never reach a result or a gradient
        advantages = torch.where(MASK.bool(), advantages, torch.full_like(advantages, float("nan")))
        old_logprobs = torch.where(MASK.bool(), old_logprobs, torch.full_like(old_logprobs, float("nan")))

    def logprobs():
        return torch.log_softmax(logits(), -1).gather(-1, tokens[..., None]).squeeze(-1)  # (2, 4)

    def surrogate():
        return surrogate_advantage(logprobs(), old_logprobs, advantages, MASK)

    def kl():
        return mean_kl_old_new(old_logits, logits(), MASK)

    def kl_fisher():  # old = new.detach(): value and gradient 0, Hessian = Fisher; stores nothing
        new = logits()
        return mean_kl_old_new(new.detach(), new, MASK)

    return SimpleNamespace(params=[w, b], x=x, logits=logits, old_logits=old_logits, tokens=tokens,
                           advantages=advantages, old_logprobs=old_logprobs, logprobs=logprobs,
                           surrogate=surrogate, kl=kl, kl_fisher=kl_fisher)


def explicit_kl_hessian(pol) -> torch.Tensor:
    """(N, N) Hessian of the mean KL(old || theta) in the flat parameters, by autograd."""
    w = pol.params[0]
    nw = w.numel()

    def kl_of(flat):
        logits = pol.x @ flat[:nw].view_as(w).T + flat[nw:]
        return mean_kl_old_new(pol.old_logits, logits, MASK)

    return torch.autograd.functional.hessian(kl_of, flat_params(pol.params))


def value(fn) -> float:
    """A closure's value at the current parameters, as a Python float."""
    with torch.no_grad():
        return fn().item()


def recording(pol, log):
    """A line_search_fn that records (surrogate improvement, KL) of every candidate step."""
    start = value(pol.surrogate)

    def evaluate():
        surrogate, kl = pol.surrogate(), pol.kl()
        log.append((float(surrogate) - start, float(kl)))
        return surrogate, kl

    return evaluate


# ---------------------------------------------------------------- conjugate gradient

def test_cg_hand_computed_2x2():
    a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=F64)
    b = torch.tensor([1.0, 2.0], dtype=F64)
    # one step: x = (b.b / b.Ab) b = (5 / 20) b
    x1, s1 = conjugate_gradient(lambda v: a @ v, b, iters=1)
    torch.testing.assert_close(x1, torch.tensor([0.25, 0.5], dtype=F64))
    assert s1["iterations"] == 1 and s1["residual_norm"] == pytest.approx(float((b - a @ x1).norm()))
    # two steps solve a 2x2 system exactly: x = (1/11, 7/11)
    x2, s2 = conjugate_gradient(lambda v: a @ v, b, iters=10)
    torch.testing.assert_close(x2, torch.tensor([1 / 11, 7 / 11], dtype=F64))
    assert s2["iterations"] == 2 and s2["residual_norm"] < 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cg_matches_linalg_solve(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 30
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    a = q @ torch.diag(torch.linspace(1.0, 20.0, n, dtype=F64)) @ q.T  # SPD, condition number 20
    b = torch.randn(n, generator=gen, dtype=F64)
    x, stats = conjugate_gradient(lambda v: a @ v, b, iters=100, residual_tol=1e-24)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-10)
    assert stats["residual_norm"] < 1e-11 and stats["iterations"] < 100
    # the A-norm of the error never grows from one iteration to the next (CG minimizes it on the Krylov space)
    exact = torch.linalg.solve(a, b)
    errors = []
    for k in range(1, 8):
        xk, _ = conjugate_gradient(lambda v: a @ v, b, iters=k, residual_tol=0.0)
        errors.append(float((xk - exact) @ a @ (xk - exact)))
    assert all(e2 <= e1 * (1 + 1e-12) for e1, e2 in itertools.pairwise(errors)) and errors[-1] < errors[0]


def test_cg_stops_on_tolerance_and_zero_rhs():
    a = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64))
    b = torch.ones(4, dtype=F64)
    _, loose = conjugate_gradient(lambda v: a @ v, b, iters=4, residual_tol=1.0)
    assert loose["iterations"] < 4 and loose["residual_norm"] ** 2 < 1.0
    x, zero = conjugate_gradient(lambda v: a @ v, torch.zeros(4, dtype=F64))
    assert zero["iterations"] == 0 and torch.equal(x, torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="iters must be >= 1"):
        conjugate_gradient(lambda v: a @ v, b, iters=0)


def test_cg_stops_on_non_positive_curvature():
    a = torch.diag(torch.tensor([1.0, -1.0], dtype=F64))  # indefinite: b^T A b = 0
    x, stats = conjugate_gradient(lambda v: a @ v, torch.tensor([1.0, 1.0], dtype=F64), iters=5)
    assert stats["iterations"] == 1 and torch.isfinite(x).all() and torch.equal(x, torch.zeros(2, dtype=F64))


# ---------------------------------------------------------------- flat vectors

def test_flat_params_round_trip_bit_exact():
    params = [torch.randn(2, 3), torch.randn(4).to(torch.bfloat16), torch.randn(1, dtype=F64)]
    before = [p.clone() for p in params]
    flat = flat_params(params)
    assert flat.shape == (11,) and flat.dtype == F64  # widest dtype, at least float32
    set_flat_params(params, flat + 1.0)
    assert all(not torch.equal(p, q) for p, q in zip(params, before))
    set_flat_params(params, flat)
    assert all(torch.equal(p, q) and p.dtype == q.dtype for p, q in zip(params, before))
    with pytest.raises(ValueError, match="11 elements"):
        set_flat_params(params, flat[:-1])


def test_flat_grad_matches_backward_and_fills_unused():
    w = torch.randn(3, 2, requires_grad=True)
    unused = torch.randn(4, requires_grad=True)
    v = torch.randn(2, requires_grad=True)
    out = (w @ v).square().sum()
    g = flat_grad(out, [w, unused, v], retain_graph=True)
    out.backward()
    torch.testing.assert_close(g, torch.cat([w.grad.reshape(-1), torch.zeros(4), v.grad]))
    assert w.grad is not None and unused.grad is None  # flat_grad itself never writes .grad
    with pytest.raises(ValueError, match="scalar"):
        flat_grad(w @ v, [w])
    with pytest.raises(ValueError, match="does not depend"):
        flat_grad(torch.tensor(1.0), [w])


# ---------------------------------------------------------------- KL and surrogate

def test_full_kl_hand_computed_and_masked():
    old = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]], dtype=F64))  # (1, 2, 2)
    new = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5]]], dtype=F64))
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    kl1 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    both = torch.ones(1, 2, dtype=F64)
    assert mean_kl_old_new(old, new, both).item() == pytest.approx((kl0 + kl1) / 2, rel=1e-12)
    # a padded position with NaN logits changes neither the value nor the gradient
    first = torch.tensor([[1.0, 0.0]], dtype=F64)
    new_junk = new.clone()
    new_junk[0, 1] = float("nan")
    new_junk.requires_grad_()
    kl = mean_kl_old_new(old, new_junk, first)
    assert kl.item() == pytest.approx(kl0, rel=1e-12)
    kl.backward()
    assert torch.isfinite(new_junk.grad).all() and (new_junk.grad[0, 1] == 0).all()
    # a micro-batch share: divided by the given normalizer instead of its own count
    assert mean_kl_old_new(old, new, both, normalizer=4).item() == pytest.approx((kl0 + kl1) / 4, rel=1e-12)


def test_full_kl_zero_at_equality_with_zero_gradient():
    pol = linear_policy(seed=3)
    kl = pol.kl()
    assert kl.item() == 0.0
    assert float(flat_grad(kl, pol.params).abs().max()) < 1e-15
    assert value(pol.kl_fisher) == 0.0


def test_sampled_k3_is_unbiased_for_the_full_kl():
    # tokens drawn from pi_old: the mean of k3 = r - 1 - log r converges to the exact KL(old || new)
    old = torch.log(torch.tensor([0.6, 0.3, 0.1], dtype=F64))
    new = torch.log(torch.tensor([0.2, 0.5, 0.3], dtype=F64))
    exact = mean_kl_old_new(old[None, None], new[None, None], torch.ones(1, 1, dtype=F64)).item()
    gen = torch.Generator().manual_seed(0)
    idx = torch.multinomial(old.exp(), 100_000, replacement=True, generator=gen)[None]  # (1, S)
    mask = torch.ones(idx.shape, dtype=F64)
    per_token = kl_divergence(old[idx], new[idx], "k3")
    est = mean_kl_old_new(old[idx], new[idx], mask, estimator="k3").item()
    assert est == pytest.approx(per_token.mean().item(), rel=1e-12)
    assert abs(est - exact) < 4 * per_token.std().item() / math.sqrt(idx.numel())


def test_mean_kl_input_errors():
    mask = torch.ones(2, 3)
    with pytest.raises(ValueError, match="logits .B, T, V."):
        mean_kl_old_new(torch.zeros(2, 3), torch.zeros(2, 3), mask)
    with pytest.raises(ValueError, match="logprobs .B, T."):
        mean_kl_old_new(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), mask, estimator="k3")
    with pytest.raises(ValueError, match="full, k1, k2, k3, abs"):
        mean_kl_old_new(torch.zeros(2, 3), torch.zeros(2, 3), mask, estimator="k4")


def test_surrogate_hand_computed_and_equal_to_mean_advantage_at_old():
    lp = torch.log(torch.tensor([[0.5, 0.2, 0.3]]))
    old = torch.log(torch.tensor([[0.25, 0.2, 0.9]]))
    adv = torch.tensor([[3.0, -1.0, float("nan")]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # ratios 2 and 1 on the valid tokens: (2 * 3 + 1 * -1) / 2
    assert surrogate_advantage(lp, old, adv, mask).item() == pytest.approx(2.5)
    pol = linear_policy(seed=1)
    expected = (pol.advantages.nan_to_num() * MASK).sum() / MASK.sum()
    assert value(pol.surrogate) == pytest.approx(expected.item(), rel=1e-12)


# ---------------------------------------------------------------- Fisher-vector products

@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_fvp_matches_explicit_hessian_on_linear_policy(damping):
    pol = linear_policy(seed=0)
    hessian = explicit_kl_hessian(pol)  # (20, 20)
    eye = torch.eye(hessian.shape[0], dtype=F64)
    half = lambda rows: (lambda: mean_kl_old_new(pol.old_logits[rows], pol.logits()[rows], MASK[rows],
                                                 normalizer=MASK.sum()))
    fvps = {
        "stored old logits": fisher_vector_product(pol.kl, pol.params, damping),
        "old = new.detach()": fisher_vector_product(pol.kl_fisher, pol.params, damping),
        "two micro-batches": fisher_vector_product([half(slice(0, 1)), half(slice(1, 2))], pol.params, damping),
    }
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        v = torch.randn(hessian.shape[0], generator=gen, dtype=F64)
        want = (hessian + damping * eye) @ v
        for name, fvp in fvps.items():
            torch.testing.assert_close(fvp(v), want, rtol=1e-10, atol=1e-12, msg=name)
    # the Fisher is positive semi-definite; softmax's shift invariance gives it a null space
    eig = torch.linalg.eigvalsh(hessian)
    assert eig.min() > -1e-12 and eig.min() < 1e-10 < eig.max()
    with pytest.raises(ValueError, match="damping must be >= 0"):
        fisher_vector_product(pol.kl, pol.params, -1.0)


def test_fvp_matches_explicit_hessian_on_tiny_hf_model(tiny_tokenizer):
    from torch.func import functional_call
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from rlhfkit.models import position_ids_from_mask, response_logits
    from rlhfkit.models.tiny import build_tiny_model

    model = build_tiny_model(tiny_tokenizer, seed=0, hidden_size=8, num_layers=1, num_heads=2).double().eval()
    gen = torch.Generator().manual_seed(0)
    vocab, response = len(tiny_tokenizer), 3
    ids = torch.randint(4, vocab, (2, 5), generator=gen)
    attention = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]])  # left-padded prompt, right-padded response
    positions = position_ids_from_mask(attention)
    mask = attention[:, -response:].to(F64)
    # a subset deep in the network keeps the explicit Hessian small (136 x 136)
    names = ["model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight", "model.norm.weight"]
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    for n, p in named.items():
        p.requires_grad_(n in names)

    def logits_at(values=None):
        if values is None:
            out = response_logits(model, ids, attention, positions, response)
        else:
            out = functional_call(model, values, args=(), kwargs={"input_ids": ids, "attention_mask": attention,
                                                                   "position_ids": positions, "use_cache": False}).logits
            out = out[:, -response - 1:]
        return out[:, :-1]  # (2, R, V)

    with torch.no_grad():
        old_logits = logits_at()
    sizes = [p.numel() for p in params]

    def kl_of(flat):
        values = {n: c.view_as(p) for n, c, p in zip(names, flat.split(sizes), params)}
        return mean_kl_old_new(old_logits, logits_at(values), mask)

    with sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels have no second derivative
        hessian = torch.autograd.functional.hessian(kl_of, flat_params(params), vectorize=True)
    fvp = fisher_vector_product(lambda: mean_kl_old_new(old_logits, logits_at(), mask), params, damping=0.01)
    v = torch.randn(sum(sizes), generator=gen, dtype=F64)
    want = hessian @ v + 0.01 * v
    # float32 tolerance: Llama's RMSNorm computes in float32 even in a float64 model
    torch.testing.assert_close(fvp(v), want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    assert float((hessian @ v).abs().max()) > 1e-3  # the comparison is not between two zeros


# ---------------------------------------------------------------- the trust-region step

def test_full_step_is_the_scaled_natural_gradient():
    pol = linear_policy(seed=2)
    damping, max_kl = 1e-3, 1e-5
    fisher = explicit_kl_hessian(pol) + damping * torch.eye(20, dtype=F64)
    g = flat_grad(pol.surrogate(), pol.params)
    x = torch.linalg.solve(fisher, g)
    want = math.sqrt(2 * max_kl / float(x @ fisher @ x)) * x
    old = flat_params(pol.params)
    stats = trpo_step(pol.params, pol.surrogate, pol.kl, max_kl, damping=damping, cg_iters=40, cg_residual_tol=1e-24)
    assert stats["accepted"] and stats["line_search_steps"] == 0 and stats["step_fraction"] == 1.0
    torch.testing.assert_close(flat_params(pol.params) - old, want, rtol=1e-6, atol=1e-10)
    assert stats["step_norm"] == pytest.approx(float(want.norm()), rel=1e-6)
    assert stats["expected_improvement"] == pytest.approx(float(g @ want), rel=1e-6)
    # a small step: the linear model predicts the improvement, the quadratic one the KL
    assert 0.9 < stats["surrogate_improvement"] / stats["expected_improvement"] < 1.1
    assert 0.8 * max_kl < stats["kl"] <= max_kl
    assert stats["cg_residual"] < 1e-6


def test_step_improves_the_surrogate():
    pol = linear_policy(seed=1)
    before = value(pol.surrogate)
    stats = trpo_step(pol.params, pol.surrogate, pol.kl, max_kl=0.05)
    after = value(pol.surrogate)
    assert stats["accepted"] and after > before
    assert stats["surrogate_improvement"] == pytest.approx(after - before, rel=1e-9)
    assert stats["kl"] == pytest.approx(value(pol.kl), rel=1e-9) and stats["kl"] <= 0.05


def test_line_search_rejects_steps_that_break_the_kl_limit():
    # a peaked policy and a large limit: the quadratic model underestimates the KL of the full step
    kw = {"max_kl": 0.5, "damping": 0.0, "cg_iters": 30, "accept_ratio": 0.0}
    pol = linear_policy(seed=0, scale=3.0)
    old = flat_params(pol.params)
    tried: list = []
    stats = trpo_step(pol.params, pol.surrogate, pol.kl, line_search_fn=recording(pol, tried), **kw)
    assert tried[0][1] > kw["max_kl"] and tried[0][0] > 0  # the full step improves L but breaks the limit
    assert stats["accepted"] and stats["line_search_steps"] == len(tried) - 1 >= 1
    assert value(pol.kl) == pytest.approx(stats["kl"], rel=1e-9) and stats["kl"] <= kw["max_kl"]
    assert all(kl > kw["max_kl"] or gain <= 0 for gain, kl in tried[:-1])
    # only the full step allowed: rejected, and the parameters are restored bit for bit
    set_flat_params(pol.params, old)
    stats = trpo_step(pol.params, pol.surrogate, pol.kl, max_backtracks=1, **kw)
    assert not stats["accepted"] and stats["line_search_steps"] == 1
    assert stats["kl"] == 0.0 and stats["surrogate_improvement"] == 0.0 and stats["step_norm"] == 0.0
    assert torch.equal(flat_params(pol.params), old)


@pytest.mark.parametrize("failure", ["kl always above the limit", "improvement never large enough"])
def test_no_acceptable_step_restores_params_exactly(failure):
    pol = linear_policy(seed=4)
    old = [p.detach().clone() for p in pol.params]
    if failure == "kl always above the limit":  # a constant shift: same Fisher, every candidate breaks max_kl
        stats = trpo_step(pol.params, pol.surrogate, lambda: pol.kl() + 1.0, max_kl=0.1, max_backtracks=6)
    else:
        stats = trpo_step(pol.params, pol.surrogate, pol.kl, max_kl=0.1, max_backtracks=6, accept_ratio=1e9)
    assert not stats["accepted"] and stats["line_search_steps"] == 6 and stats["expected_improvement"] > 0
    assert all(torch.equal(p, q) for p, q in zip(pol.params, old))


@settings(max_examples=20, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1.0, 4.0),
       max_kl=st.one_of(st.floats(1e-3, 0.1), st.floats(0.1, 3.0)),  # large limits make the line search work
       damping=st.one_of(st.just(0.0), st.floats(0.0, 0.2)), cg_iters=st.integers(1, 20),
       backtrack_ratio=st.floats(0.3, 0.9), max_backtracks=st.integers(1, 12))
def test_every_accepted_step_respects_the_kl_limit(seed, scale, max_kl, damping, cg_iters, backtrack_ratio,
                                                   max_backtracks):
    pol = linear_policy(seed=seed, scale=scale)
    old = flat_params(pol.params)
    before = value(pol.surrogate)
    stats = trpo_step(pol.params, pol.surrogate, pol.kl, max_kl, damping=damping, cg_iters=cg_iters,
                      backtrack_ratio=backtrack_ratio, max_backtracks=max_backtracks)
    if stats["accepted"]:
        kl = value(pol.kl)  # measured again, independently of the step's own bookkeeping
        assert kl <= max_kl and kl == pytest.approx(stats["kl"], rel=1e-9, abs=1e-15)
        assert value(pol.surrogate) - before == pytest.approx(stats["surrogate_improvement"], rel=1e-9)
        assert stats["surrogate_improvement"] > 0
        assert 0 <= stats["line_search_steps"] < max_backtracks
    else:
        assert torch.equal(flat_params(pol.params), old)
        assert stats["line_search_steps"] == max_backtracks


def test_micro_batch_closures_give_the_same_step():
    whole = linear_policy(seed=5)
    split = linear_policy(seed=5)
    total = MASK.sum()

    def share(rows, kind):
        if kind == "surrogate":
            return lambda: surrogate_advantage(split.logprobs()[rows], split.old_logprobs[rows],
                                               split.advantages[rows], MASK[rows], normalizer=total)
        return lambda: mean_kl_old_new(split.old_logits[rows], split.logits()[rows], MASK[rows], normalizer=total)

    rows = [slice(0, 1), slice(1, 2)]
    surrogates, kls = [share(r, "surrogate") for r in rows], [share(r, "kl") for r in rows]
    start = flat_params(split.params)
    a = trpo_step(whole.params, whole.surrogate, whole.kl, max_kl=0.2)
    b = trpo_step(split.params, surrogates, kls, max_kl=0.2)
    assert a["accepted"] and a["line_search_steps"] == b["line_search_steps"]
    torch.testing.assert_close(flat_params(split.params), flat_params(whole.params), rtol=1e-10, atol=1e-12)
    assert a["kl"] == pytest.approx(b["kl"], rel=1e-10)
    # the same with one-forward line-search closures per micro-batch
    set_flat_params(split.params, start)
    pairs = [(lambda s=s, k=k: (s(), k())) for s, k in zip(surrogates, kls)]
    c = trpo_step(split.params, surrogates, kls, max_kl=0.2, line_search_fn=pairs)
    torch.testing.assert_close(flat_params(split.params), flat_params(whole.params), rtol=1e-10, atol=1e-12)
    assert c["surrogate_improvement"] == pytest.approx(a["surrogate_improvement"], rel=1e-10)


def test_zero_advantages_take_no_step_and_nonfinite_raises():
    pol = linear_policy(seed=6)
    old = flat_params(pol.params)
    zero = lambda: surrogate_advantage(pol.logprobs(), pol.old_logprobs, torch.zeros_like(MASK), MASK)
    stats = trpo_step(pol.params, zero, pol.kl, max_kl=0.1)
    assert not stats["accepted"] and torch.equal(flat_params(pol.params), old)
    bad = pol.advantages.clone()
    bad[0, 0] = float("nan")  # on a VALID token
    nan_fn = lambda: surrogate_advantage(pol.logprobs(), pol.old_logprobs, bad, MASK)
    with pytest.raises(FloatingPointError, match="not finite"):
        trpo_step(pol.params, nan_fn, pol.kl, max_kl=0.1)
    assert torch.equal(flat_params(pol.params), old)


@pytest.mark.parametrize("field, value", [("max_kl", 0.0), ("damping", -0.1), ("cg_iters", 0),
                                          ("backtrack_ratio", 1.0), ("max_backtracks", 0), ("accept_ratio", -1.0),
                                          ("max_kl", float("nan"))])
def test_bad_settings_are_named(field, value):
    pol = linear_policy()
    kwargs = {"max_kl": 0.01, field: value}
    with pytest.raises(ValueError, match=f"trpo_step: {field} must be"):
        trpo_step(pol.params, pol.surrogate, pol.kl, **kwargs)


# ---------------------------------------------------------------- wiring on a tiny HF policy

@pytest.mark.parametrize("measure", ["full", "k3"])
def test_trpo_step_on_tiny_hf_policy(tiny_tokenizer, measure):
    """The closures the RL loop builds from `response_logits` / `response_logprobs` (see docs/rl/trpo.md)."""
    from rlhfkit.models import position_ids_from_mask, response_logits
    from rlhfkit.models.tiny import build_tiny_model

    policy = build_tiny_model(tiny_tokenizer, seed=1, hidden_size=16, num_layers=1, num_heads=2).eval()
    gen = torch.Generator().manual_seed(1)
    vocab, response = len(tiny_tokenizer), 4
    ids = torch.randint(4, vocab, (4, 7), generator=gen)
    attention = torch.ones_like(ids)
    attention[0, :2] = 0  # left-padded prompt
    attention[1, -1] = 0  # right-padded response
    positions = position_ids_from_mask(attention)
    mask = attention[:, -response:].float()
    labels = ids[:, -response:]
    temperature = 0.7
    params = [p for p in policy.parameters() if p.requires_grad]

    def logits():  # (4, R, V), tempered like the sampling distribution
        return response_logits(policy, ids, attention, positions, response)[:, :-1] / temperature

    def logprobs_of(z):
        return torch.log_softmax(z.float(), -1).gather(-1, labels[..., None]).squeeze(-1)

    with torch.no_grad():
        start_logits = logits()
        old_logprobs = logprobs_of(start_logits)
    advantages = torch.randn(mask.shape, generator=gen)

    def surrogate():
        return surrogate_advantage(logprobs_of(logits()), old_logprobs, advantages, mask)

    def kl():
        z = logits()
        if measure == "full":
            return mean_kl_old_new(start_logits, z, mask)
        return mean_kl_old_new(old_logprobs, logprobs_of(z), mask, estimator="k3")

    def fvp_kl():
        z = logits()
        return mean_kl_old_new(z.detach(), z, mask)

    def line_search():  # one forward for both numbers
        z = logits()
        lp = logprobs_of(z)
        measured = (mean_kl_old_new(start_logits, z, mask) if measure == "full"
                    else mean_kl_old_new(old_logprobs, lp, mask, estimator="k3"))
        return surrogate_advantage(lp, old_logprobs, advantages, mask), measured

    old = flat_params(params)
    before = value(surrogate)
    stats = trpo_step(params, surrogate, kl, max_kl=0.01, fvp_kl_fn=fvp_kl, line_search_fn=line_search)
    assert stats["accepted"] and not torch.equal(flat_params(params), old)
    assert value(kl) <= 0.01 and value(kl) == pytest.approx(stats["kl"], rel=1e-5)
    assert value(surrogate) - before == pytest.approx(stats["surrogate_improvement"], rel=1e-4)
    assert stats["surrogate_improvement"] > 0 and math.isfinite(stats["cg_residual"])
    assert all(p.grad is None for p in params)  # nothing for an optimizer to step on
