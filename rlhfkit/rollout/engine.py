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

Engines register in `ENGINES` by name and are chosen with `--engine NAME` (or `RLConfig(engine=NAME)`):
- `hf`: HF `generate` on the training policy (`HFEngine`);
- `native`: our own KV-cache decode loop (`rlhfkit.rollout.native.NativeEngine`): each distinct prompt
  prefilled once for its n samples, finished rows dropped from the decode batch; in float32 it gives the
  same tokens as `hf` for the same row keys. Models it cannot run are sampled by `hf` (reason logged once).

After each `generate`, both engines hold in `last_stats` a dict of positions (tokens run through the model):
- `prefill_positions_computed`: prompt positions the prefill forwards ran, left padding included
  (hf: N x P, every row of every sample; native: B x P, each distinct prompt once);
- `prefill_positions_needed`: the distinct prompts' tokens (sum over the B prompts of their lengths);
- `decode_positions_computed`: positions the decode forwards ran (hf: every row at every step until the
  longest response ended, N x (R - 1), from the result's masks; native: only the rows still running);
- `decode_positions_needed`: sum over the N rows of (response length - 1), the tokens fed back to get the next;
- `positions_computed`, `positions_needed`: prefill + decode. Decoding waste = 1 - needed / computed.
"""

from __future__ import annotations

from typing import Protocol

import torch

from rlhfkit.rollout.generation import GenerationResult, GenerationSettings, generate
from rlhfkit.rollout.native import NativeEngine, hf_generate_stats

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
        self.last_stats: dict | None = None

    def sync_weights(self, policy) -> None:
        self.policy = policy  # the same module the trainer updates: nothing to copy

    def generate(self, prompts, settings, prompt_ids=None, row_keys=None, want_logprobs=False, add_special_tokens=None):
        exact = want_logprobs and self._logprobs_exact(len(prompts) * settings.n, settings)
        result = generate(self.policy, self.tokenizer, prompts, settings, add_special_tokens=add_special_tokens,
                          prompt_ids=prompt_ids, row_keys=row_keys, return_logprobs=exact)
        self.last_stats = hf_generate_stats(result, settings.n)
        return result

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


def _native_engine(policy, tokenizer) -> NativeEngine:
    return NativeEngine(policy, tokenizer, fallback=HFEngine(policy, tokenizer))


ENGINES = {"hf": HFEngine, "native": _native_engine}


def make_engine(name: str, policy, tokenizer) -> Engine:
    """The engine registered as `name`, sampling from `policy`."""
    try:
        cls = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown rollout engine {name!r}; choose one of: {', '.join(ENGINES)}") from None
    return cls(policy, tokenizer)
