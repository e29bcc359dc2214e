"""Padding-free forwards (`rlhfkit.models.packing`): packed rows give the padded results, per family.

Mutations that make these tests fail (each tried):
- `pack` copying a row's ids without its own positions (positions 0..L-1 across the packed row).
- `packed_kwargs` passing the 2D-free call to every model (OPT then attends across rows).
- `choose_mode` skipping the probe (a model that ignores position_ids gets packed rows).
- `_has_sliding_window` returning False (Gemma 2 / Mistral get a 4D mask that drops their window).
- `_response_positions` one column late (labels of the next token).
- `bin_rows` ignoring capacity (one giant packed row).
"""

import pytest
import torch

from rlhfkit.models import ScalarHeadModel, position_ids_from_mask, response_logits, response_logprobs
from rlhfkit.models.families import FAMILIES, build_family_model, build_family_tokenizer
from rlhfkit.models.packing import (bin_rows, choose_mode, enable_padding_free, pack, padding_free_mode,
                                    padding_free_reason)
from tests.models.padding import pad_batch

NAMES = sorted(FAMILIES)
PROMPT_LENS, RESPONSE_LENS = (3, 7, 5, 2), (6, 1, 9, 4)


def _batch(vocab, seed=0, prompt_lens=PROMPT_LENS, response_lens=RESPONSE_LENS):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in prompt_lens]
    responses = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in response_lens]
    ids, mask, resp_mask = pad_batch(prompts, responses, pad_id=0, extra_left=1, extra_right=2)
    return ids, mask, position_ids_from_mask(mask), resp_mask


def test_bin_rows_first_fit_longest_first():
    # lengths 5, 9, 3, 4, 2 into bins of 9: 9 | 5 + 4 | 3 + 2 (each bin's rows in their order)
    assert bin_rows([5, 9, 3, 4, 2], 9) == [[1], [0, 3], [2, 4]]
    assert bin_rows([12, 2], 9) == [[0], [1]]  # a row longer than the capacity gets a bin of its own


def test_pack_keeps_tokens_and_positions_and_bounds_rows():
    ids, mask, pos, _ = _batch(50)
    packing = pack(ids, mask, pos)
    lengths = mask.sum(-1)
    assert packing.shape[1] <= int(lengths.max())  # no packed row longer than the longest row
    assert packing.shape[0] < ids.shape[0]
    assert torch.equal(packing.unpack(packing.input_ids) * mask, ids * mask)
    assert torch.equal(packing.unpack(packing.position_ids) * mask, pos * mask)
    # each original row's positions restart at 0 in the packed rows
    for b in range(ids.shape[0]):
        seg = packing.position_ids[packing.seq_ids == b]
        assert torch.equal(seg, torch.arange(int(lengths[b])))


def _family(name, head="lm", **overrides):
    tok = build_family_tokenizer(name)
    model = build_family_model(name, tok, head=head, **overrides).eval()  # no dropout: the two paths compare
    return len(tok), (model if head == "lm" else ScalarHeadModel(model))


def _modes(model, padded):
    enable_padding_free(model, on=not padded)


@pytest.mark.parametrize("name", NAMES)
def test_family_logprobs_and_gradients_match_padded(name):
    vocab, model = _family(name)
    ids, mask, pos, resp_mask = _batch(vocab)
    R = resp_mask.shape[1]
    assert enable_padding_free(model) == ("mask" if name == "opt" else "positions"), padding_free_reason(model)
    weights = torch.randn(resp_mask.shape, generator=torch.Generator().manual_seed(1)) * resp_mask
    out = {}
    for padded in (True, False):
        _modes(model, padded)
        model.zero_grad(set_to_none=True)
        lp, ent = response_logprobs(model, ids, mask, pos, R, temperature=0.7, return_entropy=True)
        ((lp * weights).sum() + (ent * weights).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        out[padded] = (lp.detach() * resp_mask, ent.detach() * resp_mask, grads)
    torch.testing.assert_close(out[False][0], out[True][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[False][1], out[True][1], atol=1e-5, rtol=0)
    gap = (out[False][2] - out[True][2]).norm() / out[True][2].norm()
    assert gap < 1e-5, float(gap)


@pytest.mark.parametrize("name", NAMES)
def test_family_values_and_scores_match_padded(name):
    vocab, critic = _family(name, head="score")
    ids, mask, pos, resp_mask = _batch(vocab, seed=2)
    last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)  # (B,) last valid column
    valid = mask.bool()
    out = {}
    for padded in (True, False):
        _modes(critic, padded)
        critic.zero_grad(set_to_none=True)
        values, scores = critic.values(ids, mask, pos), critic.score(ids, mask, pos, last)
        (values[valid].sum() + scores.sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in critic.parameters() if p.grad is not None])
        out[padded] = (values.detach()[valid], scores.detach(), grads)
    assert padding_free_mode(critic) is not None
    torch.testing.assert_close(out[False][0], out[True][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[False][1], out[True][1], atol=1e-5, rtol=0)
    assert (out[False][2] - out[True][2]).norm() / out[True][2].norm() < 1e-5


def test_response_logits_match_padded():
    vocab, model = _family("llama3")
    ids, mask, pos, resp_mask = _batch(vocab, seed=3)
    R = resp_mask.shape[1]
    with torch.no_grad():
        _modes(model, True)
        padded = response_logits(model, ids, mask, pos, R)[:, :-1]
        _modes(model, False)
        packed = response_logits(model, ids, mask, pos, R)[:, :-1]
    keep = resp_mask.bool()
    torch.testing.assert_close(packed[keep], padded[keep], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gemma2", "mistral"])
def test_sliding_window_rows_longer_than_the_window_stay_exact(name):
    # window 4, rows of up to 16 tokens: a 4D block mask would let tokens see past the window
    vocab, model = _family(name, sliding_window=4)
    ids, mask, pos, resp_mask = _batch(vocab, seed=4)
    R = resp_mask.shape[1]
    assert enable_padding_free(model) == "positions"
    with torch.no_grad():
        packed = response_logprobs(model, ids, mask, pos, R)
        _modes(model, True)
        padded = response_logprobs(model, ids, mask, pos, R)
    torch.testing.assert_close(packed * resp_mask, padded * resp_mask, atol=1e-5, rtol=0)


class _PositionsFromMask(torch.nn.Module):
    """A causal LM that takes position_ids but derives positions from the attention mask (ignores them)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        if attention_mask is None or attention_mask.dim() != 2:
            attention_mask = torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids_from_mask(attention_mask), use_cache=False)


class _NoPositions(_PositionsFromMask):
    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return super().forward(input_ids, attention_mask)


@pytest.mark.parametrize("wrapper", [_PositionsFromMask, _NoPositions])
def test_models_that_ignore_positions_fall_back_to_padding(wrapper, caplog):
    vocab, inner = _family("llama3")
    model = wrapper(inner)
    with caplog.at_level("WARNING"):
        assert enable_padding_free(model) is None
    assert "padded path" in caplog.text and padding_free_reason(model) in caplog.text
    if wrapper is _NoPositions:
        return  # no forward of ours can call it (the padded path passes position_ids too)
    ids, mask, pos, resp_mask = _batch(vocab, seed=5)
    with torch.no_grad():
        out = response_logprobs(model, ids, mask, pos, resp_mask.shape[1])  # the padded path: exact
        ref = response_logprobs(inner, ids, mask, pos, resp_mask.shape[1])
    torch.testing.assert_close(out * resp_mask, ref * resp_mask, atol=1e-6, rtol=0)


class _NoPackedDetection(_PositionsFromMask):
    """Passes a 4D mask through, but replaces a missing mask by all ones (no packed-sequence detection)."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False)


def test_a_sliding_window_model_never_gets_a_block_mask():
    # positions mode fails for this wrapper; the 4D mask would pass the short probe but replace the window
    _, inner = _family("mistral")
    assert choose_mode(_NoPackedDetection(inner))[0] is None
    _, inner = _family("llama3")  # no window: the 4D mask is taken
    assert choose_mode(_NoPackedDetection(inner))[0] == "mask"


def test_off_is_the_padded_path_and_the_probe_runs_once(monkeypatch):
    vocab, model = _family("qwen2")
    assert enable_padding_free(model, on=False) is None and padding_free_mode(model) is None
    assert enable_padding_free(model) == "positions"
    calls = []
    monkeypatch.setattr("rlhfkit.models.packing.choose_mode", lambda m: calls.append(m) or choose_mode(m))
    assert enable_padding_free(model) == "positions" and not calls  # decided once per model
