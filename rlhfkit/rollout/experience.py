"""The batch of experience: sampled responses with everything the RL update needs.

Layout of every row (N rows = B prompts x n samples, consecutive groups of n):

    input_ids      [ pad pad p0 p1 p2 | r0 r1 r2 EOS pad ]     (N, P + R)
    attention_mask [  0   0   1  1  1 |  1  1  1  1   0  ]
    position_ids   [  0   0   0  1  2 |  3  4  5  6   6  ]
    response_mask                      [  1  1  1  1   0  ]     (N, R)

Per-token tensors (logprobs, ref_logprobs, values, rewards, advantages, returns) are (N, R),
aligned with `response_ids`; column t is about response token t. Values at masked positions are
meaningless (zeroed where we compute them): always combine with `response_mask`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit.algos.kl import last_valid_index


@dataclass
class Experience:
    """One rollout batch; N rows, P prompt columns, R response columns.

    The one batch type of the RL step, from rollout to update: the rollout fills the ids, masks,
    logprobs, values and scores; the trainer then fills `loss_mask`, `rewards`, `advantages` and
    `returns`. Micro-batches and a rank's rows are views of it (`select`). A batch gathered from
    every rank for the step's statistics holds only the per-token and per-row tensors (ids None).
    """

    prompt_ids: torch.Tensor | None  # (N, P) int64, left-padded
    prompt_mask: torch.Tensor | None  # (N, P) int64
    response_ids: torch.Tensor | None  # (N, R) int64, right-padded
    response_mask: torch.Tensor  # (N, R) float32, 1 through the EOS / stop token
    input_ids: torch.Tensor | None  # (N, P + R) = [prompt_ids | response_ids]
    attention_mask: torch.Tensor | None  # (N, P + R) int64 = [prompt_mask | response_mask]
    position_ids: torch.Tensor | None  # (N, P + R) int64 = cumsum(attention_mask) - 1, clamped at 0
    eos: torch.Tensor  # (N,) bool: ended on its own (EOS or stop string); False = cut at max_new_tokens
    logprobs: torch.Tensor | None = None  # (N, R) float32, policy at sampling time (the update's old_logprobs)
    ref_logprobs: torch.Tensor | None = None  # (N, R) float32, reference policy, same temperature
    values: torch.Tensor | None = None  # (N, R) float32, critic V(state before response token t) (old values)
    scores: torch.Tensor | None = None  # (N,) float32, one score per sequence (reward model or function)
    prompts: list[str] = field(default_factory=list)  # N prompt texts
    responses: list[str] = field(default_factory=list)  # N response texts (no padding / EOS)
    fields: dict[str, Any] = field(default_factory=dict)  # per-row extras (lists or (N, ...) tensors), e.g. answer
    group_size: int = 1  # n: rows i*n .. i*n+n-1 answer the same prompt (1 once rows are reshuffled)
    stopped: torch.Tensor | None = None  # (N,) bool, ended by a stop string (subset of eos)
    # Filled by the trainer after scoring (all (N, R) float32):
    loss_mask: torch.Tensor | None = None  # response_mask, zeroed for dropped groups
    rewards: torch.Tensor | None = None  # per-token rewards (score on the last token, KL penalty per token)
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.response_mask.shape[0]

    @property
    def prompt_length(self) -> int:
        return self.prompt_ids.shape[1]

    @property
    def response_length(self) -> int:
        return self.response_mask.shape[1]

    @property
    def last_index(self) -> torch.Tensor:
        """(N,) column in input_ids of each row's last valid token (its EOS, stop or last response token)."""
        return self.prompt_length + last_valid_index(self.response_mask)

    def to(self, device) -> Experience:
        """A copy with every tensor (fields included) on `device`."""
        def move(value):
            if torch.is_tensor(value):
                return value.to(device)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        return dataclasses.replace(self, **{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def select(self, index) -> Experience:
        """Rows `index` (a slice, a list of ints or a (K,) int / bool tensor) as a new Experience.

        Groups survive only a slice aligned to whole groups; otherwise group_size becomes 1.
        """
        n = self.batch_size
        if isinstance(index, slice):
            rows = torch.arange(n)[index]
            start, _, step = index.indices(n)
            grouped = step == 1 and start % self.group_size == 0 and len(rows) % self.group_size == 0
        else:
            rows = torch.as_tensor(index)
            if rows.dtype == torch.bool:
                rows = rows.nonzero().squeeze(-1)
            rows = rows.long().reshape(-1)
            grouped = self.group_size == 1
        row_list = rows.tolist()

        def take(value):
            if torch.is_tensor(value):
                return value[rows.to(value.device)]
            if isinstance(value, dict):
                return {k: take(v) for k, v in value.items()}
            if isinstance(value, list) and value:  # an empty list (texts not kept) stays empty
                if len(value) != n:
                    raise ValueError(f"Experience: a per-row list has {len(value)} entries for {n} rows")
                return [value[i] for i in row_list]
            return value

        out = {f.name: take(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "group_size"}
        return Experience(**out, group_size=self.group_size if grouped else 1)

    def minibatches(self, size: int, shuffle_generator: torch.Generator | None = None) -> Iterator[Experience]:
        """Consecutive minibatches of `size` rows (the last one may be smaller).

        With `shuffle_generator` the rows are first permuted by torch.randperm with that generator.
        """
        if size < 1:
            raise ValueError(f"minibatch size must be >= 1, got {size}")
        n = self.batch_size
        order = torch.randperm(n, generator=shuffle_generator) if shuffle_generator is not None else None
        for start in range(0, n, size):
            if order is None:
                yield self.select(slice(start, min(start + size, n)))
            else:
                yield self.select(order[start:start + size])
