"""A model path that cannot be loaded gives one clear ConfigError naming it, not a hub traceback."""

import pytest

from rlhfkit.config import ConfigError


def test_missing_folder_and_empty_folder_are_named(tmp_path, monkeypatch):
    from rlhfkit.models import load_causal_lm, load_critic, load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no-such-model"
    with pytest.raises(ConfigError, match="no-such-model: cannot load the model: no such local folder"):
        load_causal_lm(missing)
    with pytest.raises(ConfigError, match="cannot load the tokenizer: the folder exists but holds no loadable"):
        load_tokenizer(tmp_path)
    with pytest.raises(ConfigError, match="cannot load the model: the folder exists"):
        load_critic(tmp_path)
