"""Padding-free forwards: only each row's valid tokens, several rows per packed row.

A batch of [left-padded prompt | right-padded response] rows (B, T) becomes K packed rows (K, L):
the valid tokens of each row (attention_mask == 1) concatenated, position ids restarting at 0
per original row, no attention across original rows. Rows are bin-packed (first fit, longest
first) into packed rows of at most `capacity` tokens (default: the longest row), so no packed row
is longer than a padded one and attention, quadratic in the row length, never costs more than on
the padded batch. `Packing.index` maps every (b, t) back to its packed position, so results are
unpacked to the usual (B, T) / (B, R) layout.

How a model keeps original rows apart is decided once per model (`enable_padding_free`) by a probe
that compares a packed forward with the rows run alone:
- "positions": no attention mask; transformers (>= 4.54) finds the sequences from the restarting
  position ids and builds the block-diagonal mask itself, sliding windows included (Gemma 2, Mistral)
  and as varlen boundaries under flash-attention;
- "mask": an explicit (K, 1, L, L) block-diagonal causal mask, for models whose position-based
  detection is not exact (OPT builds its mask from the 2D mask). Never used with a sliding window:
  a given 4D mask replaces the model's window, which the probe's short rows would not reveal;
- None: the padded path, with the reason (no `position_ids` argument, or neither mode exact).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch

from rlhfkit.algos.masking import packed_attention_mask

log = logging.getLogger(__name__)

_MODE_ATTR = "_rlhfkit_padding_free"  # "positions" | "mask" | None, set by enable_padding_free
_REASON_ATTR = "_rlhfkit_padding_free_reason"
PROBE_LENGTHS = (5, 9, 3)  # three short rows packed into one probe row


@dataclass
class Packing:
    """K packed rows of the valid tokens of B padded rows of width T.

    input_ids, position_ids: (K, L); seq_ids: (K, L) which original row each packed token is (-1 on
    the tail padding of a packed row, which has positions restarting at 0: a segment of its own).
    index: (B, T) flat position k * L + l of token (b, t) in the packed rows, -1 where not valid.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    seq_ids: torch.Tensor
    index: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)

    def unpack(self, packed: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(K, L, ...) per-packed-token values -> (B, T, ...), `fill` where the padded row has no token."""
        flat = packed.reshape(-1, *packed.shape[2:])  # (K * L, ...)
        out = flat[self.index.clamp(min=0)]  # (B, T, ...)
        valid = (self.index >= 0).view(*self.index.shape, *([1] * (packed.dim() - 2)))
        return torch.where(valid, out, torch.full((), fill, dtype=out.dtype, device=out.device))


def bin_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows into bins of at most `capacity` tokens: first fit, longest row first.

    lengths: tokens per row. A row longer than `capacity` gets a bin of its own. Each bin's rows
    keep their original order. Used for packed rows and for token-budget micro-batches.
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        j = next((j for j, r in enumerate(room) if n <= r), None)
        if j is None:
            bins.append([i])
            room.append(capacity - n)
        else:
            bins[j].append(i)
            room[j] -= n
    return [sorted(b) for b in bins]


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
         capacity: int | None = None) -> Packing:
    """Pack the valid tokens of (B, T) rows into (K, L) rows of at most `capacity` tokens (default:
    the longest row). Positions are the rows' own `position_ids` (restarting at 0 for left-padded
    rows, since they count valid tokens)."""
    batch, width = input_ids.shape
    valid = attention_mask.bool()
    lengths = valid.sum(-1).tolist()
    bins = bin_rows(lengths, capacity or max(max(lengths), 1))
    length = max(sum(lengths[i] for i in b) for b in bins)
    ids = input_ids.new_zeros(len(bins), length)
    pos = position_ids.new_zeros(len(bins), length)
    seq = torch.full((len(bins), length), -1, dtype=torch.long, device=input_ids.device)
    index = torch.full((batch, width), -1, dtype=torch.long, device=input_ids.device)
    for k, rows in enumerate(bins):
        start = 0
        for b in rows:
            n = lengths[b]
            cols = valid[b].nonzero().squeeze(-1)  # (n,)
            ids[k, start:start + n] = input_ids[b, cols]
            pos[k, start:start + n] = position_ids[b, cols]
            seq[k, start:start + n] = b
            index[b, cols] = k * length + start + torch.arange(n, device=index.device)
            start += n
        pos[k, start:] = torch.arange(length - start, device=pos.device)  # tail padding: its own segment
    return Packing(ids, pos, seq, index)


def packed_kwargs(model, packing: Packing, mode: str) -> dict:
    """Forward keywords of a packed batch under `mode` ("positions" or "mask")."""
    if mode == "mask":
        dtype = next(model.parameters()).dtype
        mask = packed_attention_mask(packing.seq_ids, dtype if dtype.is_floating_point else torch.float32)
    else:
        mask = None
    return dict(input_ids=packing.input_ids, attention_mask=mask, position_ids=packing.position_ids, use_cache=False)


def padding_free_mode(model) -> str | None:
    """How `model`'s forwards run padding-free ("positions", "mask"), or None (padded)."""
    return getattr(model, _MODE_ATTR, None)


def padding_free_reason(model) -> str | None:
    """Why `enable_padding_free` chose the model's mode (None before it ran)."""
    return getattr(model, _REASON_ATTR, None)


def _probe_output(module, **kwargs) -> torch.Tensor:
    out = module(**kwargs)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def _probe(module, mode: str) -> float:
    """Largest |packed - alone| of the probe rows' outputs, relative to their scale."""
    device = next(module.parameters()).device
    vocab = module.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, vocab, (n,), generator=gen).to(device) for n in PROBE_LENGTHS]
    width = max(PROBE_LENGTHS)
    ids = torch.stack([torch.cat([r.new_zeros(width - len(r)), r]) for r in rows])  # left-padded (3, width)
    mask = torch.stack([torch.arange(width, device=device) >= width - len(r) for r in rows]).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    packing = pack(ids, mask, positions, capacity=sum(PROBE_LENGTHS))
    packed = packing.unpack(_probe_output(module, **packed_kwargs(module, packing, mode)))  # (3, width, D)
    worst, scale = 0.0, 1e-6
    for b, r in enumerate(rows):
        alone = _probe_output(module, input_ids=r[None], attention_mask=torch.ones_like(r)[None],
                              position_ids=torch.arange(len(r), device=device)[None], use_cache=False)[0]
        worst = max(worst, float((packed[b, width - len(r):] - alone).abs().max()))
        scale = max(scale, float(alone.abs().max()))
    return worst / scale


def _has_sliding_window(config) -> bool:
    if getattr(config, "use_sliding_window", True) is False:
        return False
    return bool(getattr(config, "sliding_window", None)) or "sliding_attention" in (getattr(config, "layer_types",
                                                                                           None) or ())


def choose_mode(module) -> tuple[str | None, str]:
    """(mode, reason) for a causal LM or a bare backbone; runs the probe without gradients in eval mode."""
    params = inspect.signature(module.forward).parameters
    if "position_ids" not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None, f"{type(module).__name__}.forward takes no position_ids: packed rows would get wrong positions"
    dtype = next(module.parameters()).dtype
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 3e-2
    was_training = module.training
    module.eval()
    errors = {}
    try:
        with torch.no_grad():
            for mode in ("positions", "mask"):
                if mode == "mask" and _has_sliding_window(module.config):
                    errors[mode] = "sliding window (a 4D mask would replace it)"
                    continue
                try:
                    err = _probe(module, mode)
                except Exception as exc:  # an attention backend that refuses the layout: the padded path
                    errors[mode] = f"{type(exc).__name__}: {exc}"[:200]
                    continue
                if err <= tol:
                    return mode, f"packed forward matches the padded one (relative error {err:.1e}) with {mode}"
                errors[mode] = f"relative error {err:.1e} > {tol:g}"
    finally:
        module.train(was_training)
    return None, "packed forward is not exact: " + "; ".join(f"{k}: {v}" for k, v in errors.items())


def enable_padding_free(model, on: bool = True) -> str | None:
    """Decide once whether `model` (causal LM, peft model or `ScalarHeadModel`) runs padding-free;
    returns the mode. on=False: padded. The reason is logged when the model falls back to padding."""
    if not on:
        setattr(model, _MODE_ATTR, None)
        setattr(model, _REASON_ATTR, "padding_free is off")
        return None
    if getattr(model, _REASON_ATTR, None) not in (None, "padding_free is off"):
        return padding_free_mode(model)
    module = model.backbone if getattr(model, "is_scalar_head", False) else model
    mode, reason = choose_mode(module)
    setattr(model, _MODE_ATTR, mode)
    setattr(model, _REASON_ATTR, reason)
    if mode is None:
        log.warning("padding_free: %s uses the padded path: %s", type(module).__name__, reason)
    return mode
