"""Response statistics: hand-computed values, padding ignored (ids past the mask never count)."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.algos import distinct_n, length_quantiles, perplexity, repeated_ngram_fraction

IDS = torch.tensor([[5, 6, 5, 6, 5, 0], [7, 8, 9, 0, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])


def test_distinct_hand_computed():
    # tokens 5 6 5 6 5 | 7 8 9: 5 distinct of 8; bigrams 56 65 56 65 | 78 89: 4 distinct of 6
    assert distinct_n(IDS, MASK, 1) == pytest.approx(5 / 8)
    assert distinct_n(IDS, MASK, 2) == pytest.approx(4 / 6)
    assert distinct_n(IDS[:, :1], MASK[:, :1], 2) == 0.0  # no bigram at all


def test_repeated_ngram_fraction_hand_computed():
    # row 0 has 3-grams 565 656 565: repeated; row 1 has one 3-gram
    assert repeated_ngram_fraction(IDS, MASK, 3) == pytest.approx(0.5)
    assert repeated_ngram_fraction(IDS, MASK, 4) == 0.0


def test_padding_never_counts():
    garbage = torch.where(MASK.bool(), IDS, torch.full_like(IDS, 5))
    for fn in (lambda i: distinct_n(i, MASK, 1), lambda i: distinct_n(i, MASK, 2),
               lambda i: repeated_ngram_fraction(i, MASK, 2)):
        assert fn(garbage) == fn(IDS)


def test_length_quantiles_and_perplexity():
    mask = torch.tensor([[1] * k + [0] * (10 - k) for k in (1, 2, 3, 4, 10)])
    assert length_quantiles(mask, (0.0, 0.5, 1.0)) == pytest.approx([1.0, 3.0, 10.0])
    assert length_quantiles(mask, (0.25,)) == pytest.approx([2.0])
    lp = torch.tensor([[-1.0, -3.0, 99.0]])
    assert perplexity(lp, torch.tensor([[1, 1, 0]])) == pytest.approx(math.exp(2.0))
