"""Collators and packing: shapes, last_index, masks, and packed == unpacked logprobs on a tiny model."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.algos.logprobs import logprobs_from_logits
from rlhfkit.data import (DataError, collate_packed, collate_preferences, collate_sft, pack_sft, packed_attention_mask,
                          split_train_eval, tokenize_sft)
from rlhfkit.models.tiny import build_tiny_model

PAD = 0


def _sft_examples(lengths, prompt_len=2, seed=0, vocab=60):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(4, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "loss_mask": [0] * min(prompt_len, n) + [1] * max(n - prompt_len, 0)})
    return out


def _response_logprobs(model, input_ids, **kwargs):
    """(B, T) ids -> (B, T-1) log p(input_ids[:, t+1] | ...), float32."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, **kwargs).logits
    return logprobs_from_logits(logits[:, :-1], input_ids[:, 1:])


def test_collate_sft_shapes_and_alignment(tok):
    examples, _ = tokenize_sft([{"prompt": "a b", "response": "c"}, {"prompt": "a", "response": "b c d e"}], tok, 32)
    batch = collate_sft(examples, pad_id=PAD)
    keys = ("input_ids", "attention_mask", "position_ids", "loss_mask")
    assert {k: tuple(v.shape) for k, v in batch.items()} == {k: (2, 6) for k in keys}
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    # one position helper for every batch (algos.position_ids_from_mask): padding repeats the last position
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 3, 3], [0, 1, 2, 3, 4, 5]]
    assert batch["loss_mask"].tolist() == [[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]]
    assert batch["input_ids"][0, 3].item() == 1 and batch["input_ids"][0, 4:].tolist() == [PAD, PAD]


def test_collate_sft_padding_changes_no_logprob(tok):
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2).eval()
    examples = _sft_examples([7, 3])
    batch = collate_sft(examples, pad_id=PAD)
    padded = _response_logprobs(model, batch["input_ids"], attention_mask=batch["attention_mask"],
                                position_ids=batch["position_ids"])
    alone = _response_logprobs(model, torch.tensor([examples[1]["input_ids"]]))
    torch.testing.assert_close(padded[1, :2], alone[0], atol=1e-5, rtol=0)


def test_collate_preferences_layout(tok):
    examples = [
        {"chosen_ids": [5, 6, 7, 1], "rejected_ids": [5, 6, 8, 9, 10, 1], "prompt_length": 2, "margin": 2.0},
        {"chosen_ids": [5, 11, 1], "rejected_ids": [5, 12, 1], "prompt_length": 1, "margin": None},
    ]
    batch = collate_preferences(examples, pad_id=PAD)
    assert batch["input_ids"].shape == (4, 6) and batch["attention_mask"].shape == (4, 6)
    assert batch["input_ids"][:, 0].tolist() == [5, 5, 5, 5]
    assert batch["input_ids"][2].tolist() == [5, 6, 8, 9, 10, 1]  # first rejected after the B chosen rows
    assert batch["last_index"].tolist() == [3, 2, 5, 2]
    last = batch["input_ids"].gather(1, batch["last_index"][:, None]).squeeze(1)
    assert last.tolist() == [1, 1, 1, 1]  # the last valid token is each sequence's EOS
    assert batch["margin"].tolist() == [2.0, 0.0] and batch["margin"].dtype == torch.float32
    assert batch["chosen_loss_mask"].tolist() == [[0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]]
    assert batch["loss_mask"][2].tolist() == [0, 0, 1, 1, 1, 1]
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 2, 2, 2]  # padding repeats the last position


def test_pack_sft_layout():
    examples = _sft_examples([5, 3, 1, 7, 4, 2], prompt_len=0)  # empty prompts: every token a response token
    rows = pack_sft(examples, max_length=10)
    # Best fit in order: 5, 3, 1 share a row; 7 opens one; 4 fits nowhere; 2 fills the 7's row.
    assert [r["seq_ids"] for r in rows] == [[0] * 5 + [1] * 3 + [2], [0] * 7 + [1] * 2, [0] * 4]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2, 0]
    # The first token of every example is never trained: it would be predicted across the boundary.
    assert rows[0]["loss_mask"] == [0, 1, 1, 1, 1, 0, 1, 1, 0]
    assert rows[1]["input_ids"][7:] == examples[5]["input_ids"]
    batch = collate_packed(rows, pad_id=PAD)
    assert batch["attention_mask"] is None and batch["input_ids"].shape == (3, 9)
    # Padding restarts its positions too, so it is a segment of its own.
    assert batch["position_ids"][2].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4]
    assert batch["seq_ids"][2].tolist() == [0] * 4 + [-1] * 5
    assert batch["loss_mask"][2].tolist() == [0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert batch["input_ids"][2, 4:].tolist() == [PAD] * 5
    with pytest.raises(ValueError, match="example 0 has 5 tokens, more than max_length=4"):
        pack_sft(examples, max_length=4)


def test_pack_sft_keeps_every_token_once():
    examples = _sft_examples([9, 1, 4, 6, 2, 8, 3, 3, 5], seed=2)
    rows = pack_sft(examples, max_length=12)
    assert all(len(r["input_ids"]) <= 12 for r in rows)
    packed = sorted(tuple(r["input_ids"][i] for i, s in enumerate(r["seq_ids"]) if s == k)
                    for r in rows for k in set(r["seq_ids"]))
    assert packed == sorted(tuple(e["input_ids"]) for e in examples)
    assert len(rows) == 4  # 41 tokens need at least 4 rows of 12


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("how", ["position_ids", "mask_4d"])
def test_packed_logprobs_equal_unpacked(tok, attn, how):
    model = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=4)
    model.set_attn_implementation(attn)
    model.eval()
    examples = _sft_examples([5, 3, 1, 7, 4, 2], seed=1)
    batch = collate_packed(pack_sft(examples, max_length=10), pad_id=PAD)
    if how == "position_ids":
        # No attention mask and no cache: transformers reads the restarting position ids as packing.
        kwargs = {"position_ids": batch["position_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    else:
        kwargs = {"position_ids": batch["position_ids"],
                  "attention_mask": packed_attention_mask(batch["seq_ids"], model.dtype)}
    packed = _response_logprobs(model, batch["input_ids"], **kwargs)  # (R, L-1)
    checked = 0
    for r, row in enumerate(batch["seq_ids"]):
        for s in range(int(row.max()) + 1):
            where = (row == s).nonzero().squeeze(1)
            if len(where) < 2:
                continue
            alone = _response_logprobs(model, batch["input_ids"][r, where][None])[0]
            torch.testing.assert_close(packed[r, where[:-1]], alone, atol=1e-5, rtol=0)
            checked += 1
    assert checked == 5


def test_packing_without_separation_would_differ(tok):
    # Guards the test above: plain causal attention across examples does change the logprobs,
    # and so does the packing detection being skipped because a cache is in use.
    model = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=4).eval()
    examples = _sft_examples([5, 3], seed=1)
    batch = collate_packed(pack_sft(examples, max_length=10), pad_id=PAD)
    alone = _response_logprobs(model, torch.tensor([examples[1]["input_ids"]]))
    for kwargs in ({}, {"position_ids": batch["position_ids"], "use_cache": True}):
        leaky = _response_logprobs(model, batch["input_ids"], **kwargs)
        assert (leaky[0, 5:7] - alone[0]).abs().max() > 1e-3


def test_split_train_eval_is_deterministic_and_disjoint():
    rows = list(range(20))
    train, evals = split_train_eval(rows, eval_fraction=0.25, seed=3)
    assert len(evals) == 5 and sorted(train + evals) == rows and train == sorted(train)
    assert split_train_eval(rows, eval_fraction=0.25, seed=3) == (train, evals)
    assert split_train_eval(rows, eval_fraction=0.25, seed=4)[1] != evals
    assert len(split_train_eval(rows, eval_size=3)[1]) == 3
    with pytest.raises(ValueError, match="exactly one"):
        split_train_eval(rows, eval_fraction=0.1, eval_size=2)
    assert split_train_eval(rows, eval_fraction=0.0) == (rows, [])
    with pytest.raises(DataError, match="cannot hold out 20 eval rows from 20"):
        split_train_eval(rows, eval_size=20)
