"""Loading tokenizers / causal LMs and saving them atomically."""

import pytest
import torch

from rlhfkit.models import load_causal_lm, load_reference, load_tokenizer, save_model


def test_load_tokenizer_pads_left_and_reuses_eos_when_pad_missing(tmp_path, tiny_tokenizer):
    import copy

    no_pad = copy.deepcopy(tiny_tokenizer)
    no_pad.pad_token = None
    no_pad.padding_side = "right"
    no_pad.save_pretrained(str(tmp_path))
    tok = load_tokenizer(tmp_path)
    assert tok.pad_token_id == tok.eos_token_id == 1
    assert tok.padding_side == "left"
    enc = tok(["the cat", "the cat sat on"], padding=True)
    assert enc["attention_mask"][0] == [0, 0, 1, 1]


def test_load_tokenizer_keeps_existing_pad(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    assert tok.pad_token_id == 0 and tok.padding_side == "left"


def test_load_causal_lm_dtype_and_reference_is_frozen(tiny_model_dir, tiny_model):
    model = load_causal_lm(tiny_model_dir, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    ref = load_reference(tiny_model_dir)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    ids = torch.tensor([[4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(ref(input_ids=ids).logits, tiny_model(input_ids=ids).logits)
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_causal_lm(tiny_model_dir, dtype="fp8")


def test_save_model_is_atomic_and_replaces(tmp_path, tiny_model, tiny_tokenizer):
    out = tmp_path / "policy"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier save")
    assert save_model(tiny_model, tiny_tokenizer, out) == str(out)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]  # no temp folder left behind
    back = load_causal_lm(out)
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, tiny_model(input_ids=ids).logits)
    assert load_tokenizer(out).get_vocab() == tiny_tokenizer.get_vocab()


def test_failed_save_keeps_previous_folder(tmp_path, tiny_model):
    out = tmp_path / "policy"
    save_model(tiny_model, None, out)

    class Broken:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model(tiny_model, Broken(), out)
    assert (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy"]
