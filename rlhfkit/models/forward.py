"""Forward passes over [left-padded prompt | right-padded response] rows.

Position ids come from the attention mask (not from the column index) so a left-padded prompt
gets the same positions as the unpadded one; logits are computed only where they are needed.
"""

from __future__ import annotations

import inspect

import torch

from rlhfkit.algos.logprobs import entropy_from_logits, logprobs_from_logits


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting valid tokens only: cumsum(mask) - 1, clamped at 0.

    attention_mask: (B, T) of 0/1 -> (B, T) int64. Left padding gets position 0; the first valid
    token 0, the next 1, ...; masked tokens after the response repeat the last position (unused).
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


_KEEP_KW: dict = {}  # model class -> its logits_to_keep keyword (or None)


def _logits_to_keep_name(model) -> str | None:
    """The forward keyword that restricts logits to the last k positions, if the model has one."""
    from rlhfkit.models.lora import unwrap_peft

    base, _ = unwrap_peft(model)
    if type(base) not in _KEEP_KW:
        params = inspect.signature(base.forward).parameters
        # transformers >= 4.50 calls it logits_to_keep; 4.45-4.49 num_logits_to_keep.
        _KEEP_KW[type(base)] = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)
    return _KEEP_KW[type(base)]


def response_logits(model, input_ids, attention_mask, position_ids, response_length: int) -> torch.Tensor:
    """Logits predicting the last R tokens of each row: (B, T) inputs -> (B, R + 1, V).

    Row b's logits[:, t] (t < R) predict input_ids[b, T - R + t]; the last column predicts the token
    after the row (kept because `logits_to_keep` counts from the end; dropped by callers).
    Only R + 1 positions go through the LM head when the model supports `logits_to_keep`.
    """
    keep = response_length + 1
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    name = _logits_to_keep_name(model)
    if name is not None:
        kwargs[name] = keep
    logits = model(**kwargs).logits
    return logits[:, -keep:]


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                      response_length: int, temperature: float = 1.0, return_entropy: bool = False):
    """log pi(y_t | x, y_<t) of each response token under softmax(logits / temperature).

    input_ids, attention_mask, position_ids: (B, T) = [left-padded prompt (B, P) | right-padded
    response (B, R)], R = response_length. Returns logprobs (B, R) float32 and, with
    return_entropy, the entropy (B, R) of the same tempered distribution. Positions after a
    response's end hold values of no meaning: multiply by `response_mask`.
    Dividing by the sampling temperature makes these the log-probabilities of the distribution
    the tokens were actually drawn from (needed for the PPO ratio and the KL to the reference).
    """
    batch, total = input_ids.shape
    if not 0 < response_length < total:
        raise ValueError(f"response_length must be in [1, {total - 1}] for inputs of length {total}, "
                         f"got {response_length}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = response_logits(model, input_ids, attention_mask, position_ids, response_length)  # (B, R+1, V)
    labels = input_ids[:, -response_length:]  # (B, R)
    logprobs, entropy = [], []
    # Row by row: logits[b, :-1] is a contiguous (R, V) block, so neither the slice nor the
    # temperature division copies more than one row's logits at a time.
    for b in range(batch):
        row = logits[b, :-1]
        if temperature != 1.0:
            row = row / temperature
        logprobs.append(logprobs_from_logits(row, labels[b]))
        if return_entropy:
            entropy.append(entropy_from_logits(row))
    logprobs = torch.stack(logprobs)
    if return_entropy:
        return logprobs, torch.stack(entropy)
    return logprobs
