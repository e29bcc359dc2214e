"""make_optimizer picks the fused AdamW kernel where torch has it; optimizer_step clips with one norm pass."""

import torch

from rlhfkit.trainers.common import grad_norm, make_optimizer
from rlhfkit.trainers.rl_update import optimizer_step


def _model_with_grads(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    model(torch.randn(4, 6)).pow(2).sum().mul(10).backward()
    return model


def test_fused_adamw_on_cpu_and_same_update_as_the_default():
    a, b = _model_with_grads(), _model_with_grads()  # same seed: same weights and gradients
    start = [p.detach().clone() for p in a.parameters()]
    opt = make_optimizer(a.parameters(), lr=1e-2, weight_decay=0.1)
    assert opt.defaults.get("fused") is True  # torch >= 2.4 has the CPU kernel
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        opt.step()
        ref.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)
    assert all(not torch.equal(p, s) for p, s in zip(a.parameters(), start))


def test_falls_back_where_fused_is_unsupported(monkeypatch):
    real = torch.optim.AdamW

    def no_fused(params, fused=None, **kwargs):  # a torch / device without the fused kernel
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    opt = make_optimizer(_model_with_grads().parameters(), lr=1e-3)
    assert isinstance(opt, real) and not opt.defaults.get("fused")


def test_optimizer_step_returns_the_pre_clip_norm_and_clips():
    a = _model_with_grads(1)
    params = list(a.parameters())
    before = float(grad_norm(params))
    grads = [p.grad.clone() for p in params]
    assert before > 0.5
    opt = torch.optim.SGD(params, lr=1.0)
    weights = [p.detach().clone() for p in params]
    norm = optimizer_step(0, "policy", params, opt, None, max_grad_norm=0.5)
    assert abs(norm - before) < 1e-5 * before
    for w, g, p in zip(weights, grads, params):  # SGD with lr 1: the step is the clipped gradient
        torch.testing.assert_close(w - p.detach(), g * (0.5 / before), atol=1e-6, rtol=1e-4)
    assert all(p.grad is None for p in params)


def test_cpu_threads_drop_to_one_only_on_a_busy_cpu(monkeypatch):
    from rlhfkit.trainers import common

    before = torch.get_num_threads()
    cpu = torch.device("cpu")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(common.os, "cpu_count", lambda: 4)
    set_calls = []
    threads = {"n": 4}
    monkeypatch.setattr(common.torch, "get_num_threads", lambda: threads["n"])
    monkeypatch.setattr(common.torch, "set_num_threads", lambda n: set_calls.append(n) or threads.update(n=n))
    monkeypatch.setattr(common.os, "getloadavg", lambda: (3.5, 0.0, 0.0))
    assert common.configure_cpu_threads(cpu) == 4 and not set_calls  # idle enough: torch's default stays
    monkeypatch.setattr(common.os, "getloadavg", lambda: (4.2, 0.0, 0.0))
    assert common.configure_cpu_threads(torch.device("meta")) == 4 and not set_calls  # not the CPU
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert common.configure_cpu_threads(cpu) == 4 and not set_calls  # the user's choice
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert common.configure_cpu_threads(cpu) == 1 and set_calls == [1]  # busy: one thread
    monkeypatch.undo()
    assert torch.get_num_threads() == before  # the fakes never touched the real setting
