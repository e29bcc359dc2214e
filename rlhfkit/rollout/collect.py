"""`make_experience`: sample responses, then every no-grad quantity the RL update needs.

Each model runs once over the same (input_ids, attention_mask, position_ids): one generate, one
forward for the policy logprobs (none in float32: they come from generate's logits), one for the
reference, one for the critic, one (or none when the reward model reuses the ids) for the reward model.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from types import SimpleNamespace

import torch

from rlhfkit.algos.masking import position_ids_from_mask
from rlhfkit.models.forward import response_logprobs
from rlhfkit.rollout.experience import Experience
from rlhfkit.rollout.engine import HFEngine
from rlhfkit.rollout.generation import GenerationSettings, eval_mode
from rlhfkit.rollout.scoring import check_scores


def _repeat_fields(fields: dict | None, n_prompts: int, n: int) -> dict:
    """Per-prompt extras (lists or tensors of length B) repeated to one entry per sample (B * n)."""
    out = {}
    for name, values in (fields or {}).items():
        if len(values) != n_prompts:
            raise ValueError(f"fields[{name!r}] has {len(values)} entries for {n_prompts} prompts; "
                             "give one value per prompt")
        if torch.is_tensor(values):
            out[name] = values.repeat_interleave(n, dim=0)
        else:
            out[name] = [v for v in values for _ in range(n)]
    return out


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero where mask is 0 (exact zeros, not -0.0 or NaN * 0). x, mask: (N, R)."""
    return x.masked_fill(mask == 0, 0.0)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _by_rows(fn, inputs, device, batch_size: int | None) -> torch.Tensor:
    """fn over row chunks of the (N, T) inputs (moved to `device`), concatenated along rows."""
    n = inputs[0].shape[0]
    size = batch_size or n
    return torch.cat([fn(*(t[i:i + size].to(device) for t in inputs)) for i in range(0, n, size)])


def _enter(ref_context, policy):
    """A context manager from `ref_context`: one already, a factory of the policy
    (`adapters_disabled`), or a zero-argument factory (`lambda: adapters_disabled(policy)`)."""
    if hasattr(ref_context, "__enter__"):
        return ref_context
    if callable(ref_context):
        try:
            inspect.signature(ref_context).bind(policy)
        except TypeError:
            return ref_context()
        except ValueError:  # no signature (some builtins): assume it takes the policy
            pass
        return ref_context(policy)
    raise TypeError("ref_context must be a context manager or a callable returning one, "
                    "e.g. rlhfkit.models.adapters_disabled")


def make_experience(policy, tokenizer, prompts: list[str], settings: GenerationSettings, reference=None,
                    critic=None, scorer=None, fields: dict | None = None, ref_context=None,
                    add_special_tokens: bool | None = None, forward_batch_size: int | None = None,
                    prompt_ids: list[list[int]] | None = None, policy_logprobs: bool = True,
                    row_keys: torch.Tensor | None = None, engine=None) -> Experience:
    """Generate `settings.n` responses per prompt and score them; returns an `Experience` (N = B * n rows).

    policy: causal LM (or peft model) that samples. reference: a frozen causal LM for
    `ref_logprobs`; or ref_context: a context manager, or a callable returning one (called with the
    policy, or with no argument), inside which `policy` computes as the reference: for LoRA
    `ref_context=adapters_disabled`, so no second copy of the weights exists.
    critic: a `ScalarHeadModel`; `values[:, t]` is V of the state before response token t (its
    hidden state at the preceding position).
    scorer: called as `scorer(experience)` -> (N,) scores. fields: per-prompt extras (B entries
    each, e.g. {"answer": [...]}) repeated per sample and handed to the scorer.
    prompt_ids / add_special_tokens: how prompts become ids, see `generate`. row_keys: (N,) keys for
    batch-invariant sampling (see `generate`).
    Logprobs use logits / settings.temperature, the distribution the tokens were sampled from.
    forward_batch_size: rows per forward pass after generation (None: all N at once), to bound the
    memory of the (rows, R + 1, V) logits.
    policy_logprobs: False skips the policy's no-grad forward (`logprobs` is None): a trainer that
    updates once on this batch, with the KL not in the reward, gets them from its own forward.
    engine: the rollout `Engine` that samples (default: `HFEngine` on `policy`). When it returns
    exact logprobs of the sampled tokens (HF generate with float32 weights) they are used; otherwise
    a no-grad forward of the policy computes them.
    All models run in eval mode (no dropout) without gradients; their modes are restored.
    """
    if reference is not None and ref_context is not None:
        raise ValueError("give either reference (a separate model) or ref_context (LoRA adapters off), not both")
    per_sample_fields = _repeat_fields(fields, len(prompts), settings.n)
    device = _device(policy)
    engine = engine if engine is not None else HFEngine(policy, tokenizer)
    with torch.no_grad(), eval_mode(policy, reference, critic):
        gen = engine.generate(prompts, settings, prompt_ids=prompt_ids, row_keys=row_keys,
                              want_logprobs=policy_logprobs, add_special_tokens=add_special_tokens)
        if scorer is not None and hasattr(scorer, "prefetch"):  # remote rewards: in flight during the forwards below
            scorer.prefetch(SimpleNamespace(prompts=gen.prompts, responses=gen.responses, eos=gen.eos,
                                            stopped=gen.stopped, fields=per_sample_fields))
        prompt_length, response_length = gen.prompt_ids.shape[1], gen.response_ids.shape[1]
        mask = gen.response_mask  # (N, R)
        input_ids = torch.cat([gen.prompt_ids, gen.response_ids], dim=1)  # (N, P+R)
        attention_mask = torch.cat([gen.prompt_mask, mask.long()], dim=1)  # (N, P+R)
        position_ids = position_ids_from_mask(attention_mask)  # (N, P+R)
        inputs = (input_ids, attention_mask, position_ids)

        def logprobs_of(model):  # (N, R)
            return _by_rows(lambda *t: response_logprobs(model, *t, response_length, temperature=settings.temperature),
                            inputs, _device(model), forward_batch_size)

        logprobs = None
        if policy_logprobs:
            logprobs = _masked((gen.logprobs if gen.logprobs is not None else logprobs_of(policy)).to(device), mask)
        ref_logprobs = None
        if ref_context is not None or reference is not None:
            with _enter(ref_context, policy) if ref_context is not None else nullcontext():
                ref_logprobs = _masked(logprobs_of(policy if reference is None else reference).to(device), mask)
        values = None
        if critic is not None:
            all_values = _by_rows(critic.values, inputs, _device(critic), forward_batch_size).to(device)  # (N, P+R)
            # Column P-1+t holds the state that predicts response token t.
            values = _masked(all_values[:, prompt_length - 1:prompt_length - 1 + response_length], mask)

    exp = Experience(
        prompt_ids=gen.prompt_ids, prompt_mask=gen.prompt_mask, response_ids=gen.response_ids, response_mask=mask,
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, eos=gen.eos,
        logprobs=logprobs, ref_logprobs=ref_logprobs, values=values, prompts=gen.prompts,
        responses=gen.responses, fields=per_sample_fields, group_size=settings.n, stopped=gen.stopped)
    if scorer is not None:
        with torch.no_grad():
            scores = scorer(exp)
        exp.scores = check_scores(scores, exp.prompts, exp.responses, getattr(scorer, "name", type(scorer).__name__))
        exp.scores = exp.scores.to(device)
    return exp
