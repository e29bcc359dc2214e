"""Forward passes over [left-padded prompt | right-padded response] rows.

Position ids come from the attention mask (not from the column index) so a left-padded prompt
gets the same positions as the unpadded one; logits are computed only where they are needed.
"""

from __future__ import annotations

import inspect

import torch

from rlhfkit.algos.logprobs import logprobs_and_entropy
from rlhfkit.algos.masking import position_ids_from_mask  # noqa: F401  (re-exported)
from rlhfkit.models.packing import Packing, pack, packed_kwargs, padding_free_mode


_CHUNK_ELEMENTS = 1 << 21  # logits per row chunk in logprobs_and_entropy
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
    mode = padding_free_mode(model)
    if mode is not None:
        logits, packing, cols = _packed_response_logits(model, input_ids, attention_mask, position_ids,
                                                        response_length, mode)
        where = _response_positions(packing, cols, logits.shape[1], response_length + 1)  # (B, R + 1)
        flat = logits.reshape(-1, logits.shape[-1])[where.clamp(min=0)]  # (B, R + 1, V)
        return flat.masked_fill((where < 0)[..., None], 0.0)
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
    Both outputs are differentiable; an entropy that is only logged (no loss term) costs its forward
    (shared with the logprobs: one logsumexp) and no backward.
    """
    batch, total = input_ids.shape
    if not 0 < response_length < total:
        raise ValueError(f"response_length must be in [1, {total - 1}] for inputs of length {total}, "
                         f"got {response_length}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mode = padding_free_mode(model)
    if mode is not None:
        return _packed_response_logprobs(model, input_ids, attention_mask, position_ids, response_length, mode,
                                         temperature, return_entropy)
    logits = response_logits(model, input_ids, attention_mask, position_ids, response_length)  # (B, R+1, V)
    # One pass over all B x (R + 1) rows (not a loop over the batch: B separate slices made autograd
    # allocate B full-size gradient buffers). The last column predicts past the row's end; it gets a
    # dummy label and is dropped, which keeps the (B, R + 1, V) logits a view instead of a copy.
    labels = torch.cat([input_ids[:, -response_length:], input_ids.new_zeros(batch, 1)], dim=1)  # (B, R+1)
    # Row chunks of ~2M logits (8 MiB per float32 temporary) bound the transient memory whatever B x R
    # is, and are as fast as larger ones (measured at V = 8192: 256-row chunks no slower than 1024).
    chunk = max(1, _CHUNK_ELEMENTS // logits.shape[-1])
    logprobs, entropy = logprobs_and_entropy(logits, labels, temperature=temperature, chunk_size=chunk,
                                             with_entropy=return_entropy)
    if return_entropy:
        return logprobs[:, :-1], entropy[:, :-1]
    return logprobs[:, :-1]


def _packed_response_logits(model, input_ids, attention_mask, position_ids, response_length: int, mode: str):
    """Logits of the packed rows at the columns some response token needs: (K, C, V), the Packing and cols (C,).

    Only the C columns that predict a response token (in any packed row) go through the LM head
    when the model takes a tensor `logits_to_keep`; otherwise all L columns do (cols = arange(L)).
    """
    packing = pack(input_ids, attention_mask, position_ids)
    # column T - R - 1 + t predicts response token t (the last prompt token predicts the first)
    needed = packing.index[:, -response_length - 1:-1]  # (B, R)
    needed = needed[attention_mask[:, -response_length:].bool() & (needed >= 0)]
    length = packing.shape[1]
    kwargs = packed_kwargs(model, packing, mode)
    name = _logits_to_keep_name(model)
    if name == "logits_to_keep":  # transformers >= 4.50 also takes the columns themselves
        cols = torch.unique(needed % length) if needed.numel() else needed.new_zeros(1)
        kwargs[name] = cols
    else:
        cols = torch.arange(length, device=input_ids.device)
    return model(**kwargs).logits, packing, cols


def _response_positions(packing: Packing, cols: torch.Tensor, kept: int, width: int) -> torch.Tensor:
    """(B, width) flat index into the (K, kept) packed logits of the last `width` - 1 tokens' predecessors
    and each row's last column; -1 where the padded row has no token there."""
    length = packing.shape[1]
    where = torch.full((length,), -1, dtype=torch.long, device=cols.device)
    where[cols] = torch.arange(len(cols), device=cols.device)  # packed column -> kept column
    index = packing.index[:, -width:]  # (B, width): column T - width + j predicts token T - width + j + 1
    row, col = index.div(length, rounding_mode="floor"), where[index.remainder(length)]
    return torch.where((index >= 0) & (col >= 0), row * kept + col, torch.full_like(index, -1))


def _packed_response_logprobs(model, input_ids, attention_mask, position_ids, response_length: int, mode: str,
                              temperature: float, return_entropy: bool):
    """`response_logprobs` on packed rows: log-probabilities of the (K, C) kept packed positions, each
    labelled with the next packed token, gathered into (B, R); 0 where the response has no token."""
    logits, packing, cols = _packed_response_logits(model, input_ids, attention_mask, position_ids,
                                                    response_length, mode)
    ids = packing.input_ids
    labels = torch.cat([ids[:, 1:], ids.new_zeros(ids.shape[0], 1)], dim=1)[:, cols]  # (K, C) next packed token
    chunk = max(1, _CHUNK_ELEMENTS // logits.shape[-1])
    logprobs, entropy = logprobs_and_entropy(logits, labels, temperature=temperature, chunk_size=chunk,
                                             with_entropy=return_entropy)
    where = _response_positions(packing, cols, logits.shape[1], response_length + 1)[:, :-1]  # (B, R)
    # the source of a valid response token is valid (rows are contiguous), so -1 marks padding only
    valid = (where >= 0) & attention_mask[:, -response_length:].bool()

    def unpack(x):  # (K, C) -> (B, R), 0 off the responses
        return torch.where(valid, x.reshape(-1)[where.clamp(min=0)], torch.zeros((), dtype=x.dtype, device=x.device))

    return (unpack(logprobs), unpack(entropy)) if return_entropy else unpack(logprobs)


def token_logprobs(model, batch: dict) -> torch.Tensor:
    """log p(token t+1 | tokens <= t) of every next token of supervised rows (SFT, PPO-ptx).

    batch: input_ids, attention_mask (or a packed `attention_mask_4d`), position_ids (B, T) ->
    (B, T-1) float32; column t scores input_ids[:, t + 1]. Mask with loss_mask[:, 1:].
    """
    from rlhfkit.algos.logprobs import logprobs_from_logits

    mask = batch.get("attention_mask_4d", batch["attention_mask"])
    logits = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"],
                   use_cache=False).logits  # (B, T, V)
    return logprobs_from_logits(logits[:, :-1], batch["input_ids"][:, 1:])
