"""TRPO: the natural-gradient step under a hard KL limit (Schulman et al. 2015, arXiv:1502.05477, appendix C).

    maximize_theta  L(theta) = mean_t [ pi_theta(y_t) / pi_old(y_t) * A_t ]
    subject to      KL_bar(theta) = mean_t KL(pi_old(.|s_t) || pi_theta(.|s_t)) <= max_kl

One step: g = grad L; x = (F + damping I)^-1 g by conjugate gradient, where F v (the Fisher-vector
product) is the Hessian-vector product of KL_bar at theta_old (double backprop, no explicit matrix);
the full step s = sqrt(2 max_kl / x^T (F + damping I) x) x puts the quadratic KL model on the limit; a
backtracking line search then shrinks s until the surrogate improves and the measured KL <= max_kl.

Closures (`surrogate_fn`, `kl_fn`, ...) take no argument and run the model at the CURRENT values of
`params`; `trpo_step` moves the parameters in place between calls. Each may also be a sequence of
closures (micro-batches), each returning its share already divided by the whole minibatch's
normalizer, so that their sum is the minibatch mean: memory is then one micro-batch at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from rlhfkit.algos.kl import KL_ESTIMATORS, kl_divergence
from rlhfkit.algos.masking import _valid, aggregate_loss
from rlhfkit.algos.ppo import _log_ratio

Closure = Callable[[], torch.Tensor]
Closures = Closure | Sequence[Closure]


# ---------------------------------------------------------------- flat parameter vectors

def _work_dtype(params: Sequence[torch.Tensor]) -> torch.dtype:
    # at least float32: conjugate gradient in bf16 loses the step; float64 stays float64 for the tests
    dtype = torch.float32
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    return dtype


def flat_params(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """All parameters as one detached vector: list of tensors -> (N,), N = total numel.

    The dtype is at least float32 (bf16/fp16 weights are upcast exactly), so
    `set_flat_params(params, flat_params(params))` restores every parameter bit for bit.
    """
    params = list(params)
    dtype = _work_dtype(params)
    return torch.cat([p.detach().reshape(-1).to(dtype) for p in params])


def set_flat_params(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy a flat vector (N,) into `params` in place (cast to each parameter's dtype), without autograd."""
    params = list(params)
    total = sum(p.numel() for p in params)
    if flat.ndim != 1 or flat.numel() != total:
        raise ValueError(f"set_flat_params: flat vector of shape {tuple(flat.shape)} does not fit "
                         f"{len(params)} parameters with {total} elements in all; build it with flat_params")
    with torch.no_grad():
        start = 0
        for p in params:
            p.copy_(flat[start:start + p.numel()].view_as(p))
            start += p.numel()


def flat_grad(output: torch.Tensor, params: Sequence[torch.Tensor], retain_graph: bool | None = None,
              create_graph: bool = False) -> torch.Tensor:
    """d output / d params as one vector: scalar -> (N,), zeros for parameters output does not use.

    Uses `torch.autograd.grad`, so no `.grad` attribute is touched. `create_graph=True` keeps the
    gradient differentiable (for Hessian-vector products); `retain_graph` defaults to `create_graph`,
    as in torch, since a differentiable gradient needs the graph it was built from.
    """
    params = list(params)
    if output.dim() != 0:
        raise ValueError(f"flat_grad: output must be a scalar, got shape {tuple(output.shape)}")
    if not output.requires_grad:
        raise ValueError("flat_grad: output does not depend on the parameters (requires_grad is False); "
                         "run the closure's forward with gradients enabled and parameters that require grad")
    grads = torch.autograd.grad(output, params, retain_graph=retain_graph, create_graph=create_graph,
                                allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


# ---------------------------------------------------------------- KL and surrogate

def _full_kl_tokens(old_logits: torch.Tensor, new_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_v p_old(v) (log p_old(v) - log p_new(v)) per position: (B, T, V) -> (B, T), float32 or wider."""
    dtype = torch.promote_types(new_logits.dtype, torch.float32)
    # padding rows are replaced by zeros BEFORE the softmax: a NaN there would reach the
    # gradient through softmax's backward even with the row selected away afterwards
    valid = _valid(mask)[..., None]
    zero = torch.zeros((), dtype=dtype, device=new_logits.device)
    logp_old = torch.log_softmax(torch.where(valid, old_logits.to(dtype), zero), dim=-1)
    logp_new = torch.log_softmax(torch.where(valid, new_logits.to(dtype), zero), dim=-1)
    p_old = logp_old.exp()
    # p log p -> 0 where p_old = 0 (a -inf logit); 0 * -inf would be NaN
    terms = torch.where(p_old > 0, p_old * (logp_old - logp_new), torch.zeros((), dtype=dtype, device=p_old.device))
    return terms.sum(-1)


def mean_kl_old_new(old: torch.Tensor, new: torch.Tensor, mask: torch.Tensor, estimator: str = "full",
                    normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Mean over valid response tokens of KL(pi_old(.|s_t) || pi_new(.|s_t)), TRPO's constraint.

    estimator="full" (exact, what the Fisher-vector product needs): old, new are LOGITS (B, T, V),
    already divided by the sampling temperature; per token KL_t = sum_v p_old(v) log(p_old(v) / p_new(v)).
    estimator in k1, k2, k3, abs (sampled, cheap): old, new are the LOGPROBS (B, T) of the tokens
    that were sampled from pi_old; KL_t = kl_divergence(old, new, estimator). k3 = r - 1 - log r with
    r = pi_new / pi_old is unbiased for the same per-token KL and >= 0.
    mask: (B, T) -> scalar = sum_t m KL_t / sum_t m (or / `normalizer` for a micro-batch's share).
    With old = new.detach() (estimator "full") the value and gradient are 0 and the Hessian is the
    Fisher matrix at the current parameters, so no old logits need to be stored for F v.
    """
    if estimator == "full":
        if old.shape != new.shape or old.shape[:-1] != mask.shape:
            raise ValueError(f"mean_kl_old_new(full): old {tuple(old.shape)} and new {tuple(new.shape)} must be "
                             f"logits (B, T, V) over the mask {tuple(mask.shape)}; for per-token logprobs "
                             "pass estimator='k3'")
        per_token = _full_kl_tokens(old, new, mask)  # (B, T)
    elif estimator in KL_ESTIMATORS:
        if old.shape != mask.shape or new.shape != mask.shape:
            raise ValueError(f"mean_kl_old_new({estimator}): old {tuple(old.shape)} and new {tuple(new.shape)} must "
                             f"be logprobs (B, T) like the mask {tuple(mask.shape)}")
        zero = torch.zeros((), dtype=new.dtype, device=new.device)
        d = torch.where(_valid(mask), old - new, zero)  # garbage on padding must not reach exp()
        per_token = kl_divergence(d, torch.zeros_like(d), estimator)
    else:
        raise ValueError(f"mean_kl_old_new: unknown estimator {estimator!r}; choose full, "
                         f"{', '.join(KL_ESTIMATORS)}")
    return aggregate_loss(per_token, mask, "token-mean", normalizer)


def surrogate_advantage(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, agg: str = "token-mean", normalizer: float | torch.Tensor | None = None,
                        norm_len: int | None = None) -> torch.Tensor:
    """TRPO's surrogate advantage L = aggregate(ratio * A) (Schulman et al. 2015, eq. 14), to MAXIMIZE.

    logprobs (with grad), old_logprobs, advantages, mask: (B, T) -> scalar; ratio = exp(logprobs -
    old_logprobs), log-ratio clamped to +-20 like the PPO losses. At theta = theta_old, L = mean A and
    grad L is the policy gradient. `agg`, `normalizer`, `norm_len`: see `aggregate_loss`.
    """
    ratio = torch.exp(_log_ratio(logprobs, old_logprobs, mask))
    return aggregate_loss(ratio * advantages, mask, agg, normalizer, norm_len)


# ---------------------------------------------------------------- conjugate gradient and F v

def conjugate_gradient(fvp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       residual_tol: float = 1e-10) -> tuple[torch.Tensor, dict]:
    """Solve F x = b for symmetric positive-definite F given only v -> F v (Hestenes & Stiefel 1952).

    b: (N,) -> x: (N,), starting from x = 0, at most `iters` products. Stops early when
    ||r||^2 < residual_tol (the squared residual norm, as in the paper's reference code) or when
    the curvature p^T F p is not positive (F not positive-definite along p; x so far is kept).
    stats: residual_norm ||b - F x|| (from the CG recurrence), iterations (products used).
    """
    if iters < 1:
        raise ValueError(f"conjugate_gradient: iters must be >= 1, got {iters}")
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = float(r @ r)
    done = 0
    while done < iters and rr >= residual_tol:
        fp = fvp(p)
        curvature = float(p @ fp)
        done += 1
        if not curvature > 0:  # also catches NaN
            break
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * fp
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, {"residual_norm": math.sqrt(rr), "iterations": done}


def _as_list(fns: Closures) -> list[Closure]:
    return [fns] if callable(fns) else list(fns)


def fisher_vector_product(kl_fn: Closures, params: Sequence[torch.Tensor], damping: float,
                          reuse_graph: bool | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> (H_KL + damping I) v, H_KL = Hessian of the mean KL(pi_old || pi_theta) at the current params.

    kl_fn() returns the mean KL at the current params, with gradient (or a sequence of micro-batch
    shares); at theta = theta_old its gradient is 0 and H_KL is the Fisher matrix F. Computed by
    double backprop, H v = grad_theta (grad_theta KL . v) (Pearlmutter 1994): memory of one gradient,
    never an (N, N) matrix. v: (N,) -> (N,). With one closure the KL graph is built once and reused
    by every product (`reuse_graph` default); with several, each product recomputes them one at a
    time, so memory stays one micro-batch's. The KL closures run with attention on its math
    backend (`_twice_differentiable_attention`). The damping (Levenberg-Marquardt style, appendix C)
    keeps F + damping I well conditioned where F is singular (e.g. parameters no token uses).
    Do not change params while the returned function is in use.
    """
    if damping < 0:
        raise ValueError(f"fisher_vector_product: damping must be >= 0, got {damping}")
    params = [p for p in params]
    pieces = _as_list(kl_fn)
    reuse = len(pieces) == 1 if reuse_graph is None else reuse_graph

    def kl_grad(fn: Closure) -> torch.Tensor:
        with _twice_differentiable_attention():
            return flat_grad(fn(), params, create_graph=True)

    cached = [kl_grad(fn) for fn in pieces] if reuse else None

    def fvp(v: torch.Tensor) -> torch.Tensor:
        out = damping * v
        for grad in (cached if cached is not None else map(kl_grad, pieces)):
            out = out + flat_grad((grad * v.to(grad.dtype)).sum(), params, retain_graph=reuse).to(v.dtype)
        return out

    return fvp


def _twice_differentiable_attention():
    """Restrict scaled_dot_product_attention to its math backend, the only one with a second derivative.

    The fused kernels (flash, memory-efficient, cuDNN; and the CPU flash kernel HF models use by
    default) raise "derivative for ..._backward is not implemented" under double backprop. The math
    backend materializes the (T, T) attention matrix: more memory, same result.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


# ---------------------------------------------------------------- the step

def _check_step_args(**values) -> None:
    rules = {"max_kl": (lambda v: v > 0, "> 0 (e.g. 0.01 nats per token)"),
             "damping": (lambda v: v >= 0, ">= 0 (e.g. 0.1)"),
             "cg_iters": (lambda v: v >= 1, ">= 1 (e.g. 10)"),
             "backtrack_ratio": (lambda v: 0 < v < 1, "in (0, 1) (e.g. 0.8)"),
             "max_backtracks": (lambda v: v >= 1, ">= 1 (e.g. 10)"),
             "accept_ratio": (lambda v: v >= 0, ">= 0 (0 accepts any improvement; e.g. 0.1)")}
    for name, value in values.items():
        ok, want = rules[name]
        if not ok(value):
            raise ValueError(f"trpo_step: {name} must be {want}, got {value}")


def _total(fns: list[Closure]) -> float:
    with torch.no_grad():
        return float(sum(float(fn()) for fn in fns))


def _total_pair(fns: list) -> tuple[float, float]:
    with torch.no_grad():
        pairs = [fn() for fn in fns]
    return float(sum(float(s) for s, _ in pairs)), float(sum(float(k) for _, k in pairs))


def trpo_step(
    params: Sequence[torch.Tensor],
    surrogate_fn: Closures,
    kl_fn: Closures,
    max_kl: float,
    damping: float = 0.1,
    cg_iters: int = 10,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 10,
    accept_ratio: float = 0.1,
    *,
    fvp_kl_fn: Closures | None = None,
    line_search_fn: Callable | Sequence[Callable] | None = None,
    cg_residual_tol: float = 1e-10,
) -> dict:
    """One TRPO update of `params` in place (Schulman et al. 2015, appendix C); returns its stats.

    surrogate_fn() -> L, the surrogate advantage to MAXIMIZE (e.g. `surrogate_advantage`), scalar
        with gradient; kl_fn() -> the measured mean KL(pi_old || pi_theta) (`mean_kl_old_new`, with
        pi_old fixed at the values of `params` when trpo_step is called). Both at the current params.
    fvp_kl_fn: the KL whose Hessian gives F v (default kl_fn), e.g. the full KL against new.detach().
    line_search_fn() -> (L, KL) from one forward, used by the line search instead of calling
        surrogate_fn and kl_fn (halves its forwards). Each closure may be a sequence of micro-batch shares.
    cg_residual_tol: conjugate gradient stops once ||r||^2 falls below it (`conjugate_gradient`).
    Equations:
      g = grad L(theta_old);  x ~= (F + damping I)^-1 g  (conjugate_gradient, cg_iters products)
      s = sqrt(2 max_kl / x^T (F + damping I) x) * x    (the quadratic KL model equals max_kl at s)
      for k = 0 .. max_backtracks - 1: theta = theta_old + backtrack_ratio^k s; accept the first
      (largest) step with measured KL <= max_kl, improvement dL > 0 and dL >= accept_ratio *
      backtrack_ratio^k g.s (a share of the linear prediction; accept_ratio=0 -> any dL > 0).
      If none is accepted, params are restored bit for bit.
    Stats (Python numbers): kl (measured KL of the params left in place, 0 if rejected),
    surrogate_improvement (dL, 0 if rejected), expected_improvement (g.s of the full step),
    line_search_steps (k of the accepted step, 0 = full step; max_backtracks if rejected),
    step_fraction (backtrack_ratio^k, 0 if rejected), step_norm (||theta - theta_old||),
    cg_residual (||(F + damping I) x - g|| / ||g||, the true relative residual), cg_iterations, accepted.
    Raises FloatingPointError (params untouched) when the surrogate or its gradient is not finite.
    """
    _check_step_args(max_kl=max_kl, damping=damping, cg_iters=cg_iters, backtrack_ratio=backtrack_ratio,
                     max_backtracks=max_backtracks, accept_ratio=accept_ratio)
    params = [p for p in params]
    if not params:
        raise ValueError("trpo_step: no parameters given; pass the policy parameters that require grad")
    surrogates = _as_list(surrogate_fn)
    kls = _as_list(kl_fn)
    old = flat_params(params)

    # 1. policy gradient of the surrogate at theta_old
    surrogate0, g = 0.0, torch.zeros_like(old)
    for fn in surrogates:
        value = fn()
        g = g + flat_grad(value, params).to(old.dtype)
        surrogate0 += float(value.detach())
    if not (math.isfinite(surrogate0) and bool(torch.isfinite(g).all())):
        raise FloatingPointError(f"trpo_step: surrogate {surrogate0} or its gradient is not finite; check the "
                                 "advantages and the old_logprobs for NaN/inf")
    stats = {"kl": 0.0, "surrogate_improvement": 0.0, "expected_improvement": 0.0, "line_search_steps": max_backtracks,
             "step_fraction": 0.0, "step_norm": 0.0, "cg_residual": 0.0, "cg_iterations": 0, "accepted": False}
    g_norm = float(g.norm())
    if g_norm == 0.0:
        return stats  # nothing to improve: zero advantages, or parameters the surrogate does not use

    # 2. natural-gradient direction x = F^-1 g, scaled onto the KL limit
    fvp = fisher_vector_product(kls if fvp_kl_fn is None else fvp_kl_fn, params, damping)
    x, cg = conjugate_gradient(fvp, g, cg_iters, cg_residual_tol)
    fx = fvp(x)
    del fvp  # frees the retained KL graph before the line search
    stats["cg_residual"] = float((fx - g).norm()) / g_norm
    stats["cg_iterations"] = cg["iterations"]
    shs = float(x @ fx)
    if not (math.isfinite(shs) and shs > 0):
        return stats
    step = math.sqrt(2.0 * max_kl / shs) * x
    expected = float(g @ step)
    stats["expected_improvement"] = expected
    if not expected > 0:
        return stats

    # 3. backtracking line search: the largest fraction that improves L and keeps the measured KL
    for k in range(max_backtracks):
        fraction = backtrack_ratio ** k
        set_flat_params(params, old + fraction * step)
        if line_search_fn is not None:
            surrogate, kl = _total_pair(_as_list(line_search_fn))
        else:
            surrogate, kl = _total(surrogates), _total(kls)
        improvement = surrogate - surrogate0
        if (math.isfinite(kl) and math.isfinite(improvement) and kl <= max_kl and improvement > 0
                and improvement >= accept_ratio * fraction * expected):
            stats.update(kl=kl, surrogate_improvement=improvement, line_search_steps=k, step_fraction=fraction,
                         step_norm=float((flat_params(params) - old).norm()), accepted=True)
            return stats
    set_flat_params(params, old)
    return stats
