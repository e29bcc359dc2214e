"""Shared fixtures: a tiny word-level tokenizer and Llama model built in-process (nothing downloaded).

The session-scoped objects are shared by every test: treat them as read-only and
`copy.deepcopy` the model before training it, applying LoRA or editing its config.
"""

import pytest
import torch

# One intra-op thread for the whole suite: float sums then do not depend on the machine, and
# `configure_cpu_threads` (which drops to 1 thread when the CPU is busy, e.g. during the
# distributed tests' subprocesses) cannot change the count between two runs a test compares.
torch.set_num_threads(1)

TINY_CORPUS = [
    "the cat sat on the mat .",
    "a dog ran to the park and back .",
    "what is 1 + 2 ? the answer is 3 .",
    "what is 4 + 5 ? the answer is 9 .",
    "7 6 8 0 = , good bad review : positive negative",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Word-level fast tokenizer over TINY_CORPUS; pad=0, eos=1, bos=2, unk=3; pads on the left."""
    from rlhfkit.models.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer(TINY_CORPUS, level="word")


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    """A random 2-layer LlamaForCausalLM (hidden 32, 4 heads, float32, eval mode). Read-only."""
    from rlhfkit.models.tiny import build_tiny_model

    return build_tiny_model(tiny_tokenizer, seed=0, hidden_size=32, num_layers=2, num_heads=4).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer, tiny_model):
    """A folder holding `tiny_model` and `tiny_tokenizer` in HF format (loads with from_pretrained)."""
    out = tmp_path_factory.mktemp("tiny_model")
    tiny_model.save_pretrained(str(out))
    tiny_tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_reward_model_dir(tmp_path_factory, tiny_tokenizer):
    """A random LlamaForSequenceClassification (num_labels=1) + tokenizer saved by HF's own
    `save_pretrained`: what any reward-model checkpoint on the hub looks like."""
    from rlhfkit.models.tiny import build_tiny_classifier

    out = tmp_path_factory.mktemp("tiny_reward_model")
    model = build_tiny_classifier(tiny_tokenizer, seed=1, hidden_size=32, num_layers=2, num_heads=4)
    model.save_pretrained(str(out))
    tiny_tokenizer.save_pretrained(str(out))
    return out
