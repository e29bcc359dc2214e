"""A non-finite loss stops the update with a message naming the step and quantity, or is skipped."""

from __future__ import annotations

import pytest
import torch

from tests.trainers.test_rl_smoke import rl_config


def test_nonfinite_loss_stops_or_skips(tiny_dir, data_dir, tmp_path):
    from rlhfkit.rollout import GenerationSettings, make_experience
    from rlhfkit.trainers.algorithms import resolve_algorithm
    from rlhfkit.trainers.common import TrainingError
    from rlhfkit.trainers.rl_setup import build_models, build_optimizers
    from rlhfkit.trainers.rl_update import UpdateContext, run_updates

    cfg = rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", kl_coef=0.0, prompts_per_step=1)
    algo = resolve_algorithm(cfg)
    models = build_models(cfg, algo, "cpu")
    ctx = UpdateContext(cfg, algo, models, build_optimizers(cfg, algo, models))
    exp = make_experience(models.policy, models.tokenizer, ["review : movie"] * 4, GenerationSettings(max_new_tokens=4))
    bad = torch.full_like(exp.logprobs, float("nan"))
    exp.loss_mask, exp.advantages, exp.returns = exp.response_mask, bad, bad
    before = [p.detach().clone() for p in models.policy.parameters()]
    with pytest.raises(TrainingError, match="step 7: policy loss is not finite"):
        run_updates(ctx, 7, exp, update_policy=True)
    cfg.on_nonfinite = "skip"
    stats = run_updates(ctx, 7, exp, update_policy=True)
    assert stats["train/skipped_minibatches"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, models.policy.parameters()))


def test_single_pass_without_rollout_logprobs_gives_the_same_update(tiny_dir, data_dir, tmp_path):
    """Skipping the rollout's policy forward (old = the update's own detached logprobs) changes nothing."""
    import copy
    import dataclasses

    from rlhfkit.rollout import GenerationSettings, make_experience
    from rlhfkit.trainers.algorithms import resolve_algorithm
    from rlhfkit.trainers.rl_setup import build_models, build_optimizers
    from rlhfkit.trainers.rl_update import UpdateContext, run_updates

    cfg = rl_config(tiny_dir, data_dir, tmp_path, algo="grpo", kl_coef=0.0, max_grad_norm=0.0, prompts_per_step=1)
    algo = resolve_algorithm(cfg)
    models = build_models(cfg, algo, "cpu")
    exp = make_experience(models.policy, models.tokenizer, ["review : movie"] * 4, GenerationSettings(max_new_tokens=5))
    adv = torch.randn_like(exp.logprobs) * exp.response_mask
    finals = []
    for old in (exp.logprobs, None):
        m = copy.deepcopy(models)
        batch = dataclasses.replace(exp, logprobs=old, loss_mask=exp.response_mask, advantages=adv, returns=adv)
        run_updates(UpdateContext(cfg, algo, m, build_optimizers(cfg, algo, m)), 0, batch, update_policy=True)
        finals.append(torch.cat([p.detach().flatten() for p in m.policy.parameters()]))
    start = torch.cat([p.detach().flatten() for p in models.policy.parameters()])
    assert not torch.allclose(finals[0], start)
    # The updates compared as vectors, on their own scale: Adam's first step is ~lr * sign(g) per
    # entry, so an entry whose gradient is float noise may step differently on another CPU kind.
    step_a, step_b = finals[0] - start, finals[1] - start
    assert float((step_a - step_b).norm() / step_a.norm()) < 1e-3
