"""Training batches: right-padded tensors with explicit masks, and SFT sequence packing.

Alignment (all collators): `loss_mask[:, t] = 1` when token `input_ids[:, t]` is a response
token the model must predict. The model predicts token t from the logits at t - 1, so

    logits = model(input_ids=..., attention_mask=..., position_ids=...).logits  # (B, T, V)
    logprobs = logprobs_from_logits(logits[:, :-1], input_ids[:, 1:])          # (B, T - 1)
    mask = loss_mask[:, 1:]                                                      # (B, T - 1)

Masks are int64 (1 = real / trained, 0 = padding / not trained). Sequence ends come from the
masks and lengths, never from comparing ids with the pad id (pad may equal EOS).
"""

from __future__ import annotations

import bisect

import torch

from rlhfkit.algos.masking import packed_attention_mask  # noqa: F401  (re-exported)
from rlhfkit.algos.masking import position_ids_from_mask


def right_pad(seqs: list[list[int]], value: int, length: int | None = None) -> torch.Tensor:
    """Lists of ints -> (N, T) int64, each padded on the right with `value` to T = longest (or `length`)."""
    if not seqs:
        raise ValueError("no examples to collate: the batch is empty")
    length = max(map(len, seqs)) if length is None else length
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, seq in enumerate(seqs):
        out[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def _check_pad(pad_id) -> int:
    if pad_id is None:
        raise ValueError("pad_id is None: give the tokenizer a pad token (or pass its eos id); padding is masked.")
    return int(pad_id)


def collate_sft(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """SFT examples (from `tokenize_sft`) -> a right-padded batch.

    Returns input_ids (B, T), attention_mask (B, T), position_ids (B, T) from the mask, and
    loss_mask (B, T) aligned with input_ids (see the module docstring: use loss_mask[:, 1:]
    with labels input_ids[:, 1:]).
    """
    pad_id = _check_pad(pad_id)
    ids = [e["input_ids"] for e in examples]
    attention_mask = right_pad([[1] * len(x) for x in ids], 0)
    return {
        "input_ids": right_pad(ids, pad_id),
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "loss_mask": right_pad([e["loss_mask"] for e in examples], 0),
    }


def pack_sft(examples: list[dict], max_length: int) -> list[dict]:
    """Pack SFT examples (from `tokenize_sft`) into rows of at most `max_length` tokens.

    Each example goes, in order, into the fullest row that still has room for it (best fit),
    else into a new row. Returns packed rows as lists (batch them with `collate_packed`):
      input_ids: the examples' ids, concatenated;
      loss_mask: theirs, with 0 on each example's first token (it would otherwise be
        "predicted" from the end of the previous example);
      position_ids: restarting at 0 for every example;
      seq_ids: which example of the row each token belongs to (0, 1, ...).
    """
    if not examples:
        raise ValueError("no examples to pack")
    rows: list[list[dict]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted: the best fit is a bisect away
    for k, e in enumerate(examples):
        n = len(e["input_ids"])
        if n > max_length:
            raise ValueError(f"example {k} has {n} tokens, more than max_length={max_length}; "
                             f"tokenize with the same max_length (overlong='truncate' or 'drop').")
        i = bisect.bisect_left(free, (n, -1))
        if i < len(free):
            room, r = free.pop(i)
        else:
            room, r = max_length, len(rows)
            rows.append([])
        rows[r].append(e)
        if room - n > 0:
            bisect.insort(free, (room - n, r))
    return [{
        "input_ids": [t for e in row for t in e["input_ids"]],
        "loss_mask": [m if j else 0 for e in row for j, m in enumerate(e["loss_mask"])],
        "position_ids": [j for e in row for j in range(len(e["input_ids"]))],
        "seq_ids": [s for s, e in enumerate(row) for _ in e["input_ids"]],
    } for row in rows]


def collate_packed(rows: list[dict], pad_id: int = 0) -> dict:
    """Packed rows (from `pack_sft`) -> a right-padded batch with no attention across examples.

    Returns input_ids (R, L), loss_mask (R, L), position_ids (R, L), seq_ids (R, L) (-1 on
    padding), and attention_mask = None. Padding restarts its positions at 0, so it forms a
    segment of its own and attends only to itself (its outputs are masked out of the loss).

    Call the model with NO attention mask and NO cache:
    `model(input_ids=..., position_ids=..., attention_mask=None, use_cache=False)`.
    Transformers (checked on 5.23, eager and sdpa) then reads the restarting position ids as
    packed sequences and builds a block-diagonal causal mask (flash-attention uses them as
    varlen boundaries). With a cache (the default in eval mode) it skips that detection and
    attends across examples, silently. Alternatively pass
    `attention_mask=packed_attention_mask(seq_ids, model.dtype)`, which works either way.
    """
    if not rows:
        raise ValueError("no packed rows to collate: the batch is empty")
    length = max(len(r["input_ids"]) for r in rows)
    pads = [length - len(r["input_ids"]) for r in rows]
    return {
        "input_ids": right_pad([r["input_ids"] for r in rows], _check_pad(pad_id), length),
        "loss_mask": right_pad([r["loss_mask"] for r in rows], 0, length),
        "position_ids": torch.tensor([r["position_ids"] + list(range(p)) for r, p in zip(rows, pads)],
                                     dtype=torch.long),
        "seq_ids": torch.tensor([r["seq_ids"] + [-1] * p for r, p in zip(rows, pads)], dtype=torch.long),
        "attention_mask": None,
    }


def collate_preferences(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Preference examples (from `tokenize_preferences`) -> one right-padded batch of 2B sequences.

    Rows 0..B-1 are the chosen sequences, rows B..2B-1 the rejected ones, in example order.
    Returns input_ids (2B, T), attention_mask (2B, T), position_ids (2B, T),
    last_index (2B,) index of each sequence's last valid token (where a reward model reads its
    score), margin (B,) float32 (0 where None), loss_mask (2B, T) on response tokens, and
    chosen_loss_mask (B, T) = loss_mask[:B] for the optional LM loss on chosen responses.
    """
    pad_id = _check_pad(pad_id)
    seqs = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
    prompt_lengths = [e["prompt_length"] for e in examples] * 2
    attention_mask = right_pad([[1] * len(s) for s in seqs], 0)
    # Response tokens are [prompt_length, len); index 0 is never predicted (module docstring).
    loss_mask = right_pad([[int(j >= max(p, 1)) for j in range(len(s))] for s, p in zip(seqs, prompt_lengths)], 0)
    return {
        "input_ids": right_pad(seqs, pad_id),
        "attention_mask": attention_mask,
        "position_ids": position_ids_from_mask(attention_mask),
        "last_index": torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long),
        "margin": torch.tensor([0.0 if e.get("margin") is None else float(e["margin"]) for e in examples],
                               dtype=torch.float32),
        "loss_mask": loss_mask,
        "chosen_loss_mask": loss_mask[: len(examples)],
    }
