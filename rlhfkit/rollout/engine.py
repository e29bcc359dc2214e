"""Rollout engines: where responses are sampled. The RL loop talks to one `Engine` and nothing else.

An engine must provide:
- `generate(prompts, settings, prompt_ids=None, row_keys=None, want_logprobs=False, add_special_tokens=None)
  -> GenerationResult`:
  `settings.n` samples per prompt in consecutive groups, left-padded prompts and right-padded
  responses with explicit masks (`GenerationResult`), each response cut after its first EOS (any of
  the model's EOS ids) or stop string, `eos` / `stopped` flags, and the decoded texts. Sampling
  must follow softmax(logits / temperature) under top-k / top-p, so the trainer's logprobs are
  those of the sampling distribution. With `row_keys` (N,) a row's tokens depend only on its key
  (`rlhfkit.rollout.seeded`). With `want_logprobs` it may fill `logprobs` (N, R) when it can give
  the exact log-probabilities of the sampled tokens (else None: the trainer runs a forward).
- `sync_weights(policy)`: make the next `generate` sample from these weights (a no-op for an
  engine that runs the training model itself; a copy for one that holds its own).

Engines register in `ENGINES` by name and are chosen with `--engine NAME`.
"""

from __future__ import annotations

from typing import Protocol

import torch

from rlhfkit.rollout.generation import GenerationResult, GenerationSettings, generate

# Most bytes of decode-step logits (N x max_new_tokens x V float32) worth holding to skip a forward.
GENERATE_LOGITS_BUDGET = 1 << 30


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[str], settings: GenerationSettings, prompt_ids: list[list[int]] | None = None,
                 row_keys: torch.Tensor | None = None, want_logprobs: bool = False,
                 add_special_tokens: bool | None = None) -> GenerationResult: ...

    def sync_weights(self, policy) -> None: ...


class HFEngine:
    """Sampling with Hugging Face `generate` (KV cache) on the training policy itself."""

    name = "hf"

    def __init__(self, policy, tokenizer):
        self.policy, self.tokenizer = policy, tokenizer

    def sync_weights(self, policy) -> None:
        self.policy = policy  # the same module the trainer updates: nothing to copy

    def generate(self, prompts, settings, prompt_ids=None, row_keys=None, want_logprobs=False, add_special_tokens=None):
        exact = want_logprobs and self._logprobs_exact(len(prompts) * settings.n, settings)
        return generate(self.policy, self.tokenizer, prompts, settings, add_special_tokens=add_special_tokens,
                        prompt_ids=prompt_ids, row_keys=row_keys, return_logprobs=exact)

    def _logprobs_exact(self, rows: int, settings: GenerationSettings) -> bool:
        """Take the policy's rollout logprobs from generate's logits instead of a second forward?

        Only where they are exact: float32 / float64 weights (measured max difference to the forward
        2e-6 in float32; bf16's decode and full forward differ by ~1e-2, which would make the first
        PPO ratio noise), and only while the held logits fit in GENERATE_LOGITS_BUDGET.
        """
        param = next(self.policy.parameters())
        if param.dtype not in (torch.float32, torch.float64):
            return False
        head = getattr(self.policy, "get_output_embeddings", lambda: None)()
        if head is None or getattr(head, "weight", None) is None:
            return False
        return rows * settings.max_new_tokens * head.weight.shape[0] * 4 <= GENERATE_LOGITS_BUDGET


ENGINES = {"hf": HFEngine}


def make_engine(name: str, policy, tokenizer) -> Engine:
    """The engine registered as `name`, sampling from `policy`."""
    try:
        cls = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown rollout engine {name!r}; choose one of: {', '.join(ENGINES)}") from None
    return cls(policy, tokenizer)
