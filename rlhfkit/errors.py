"""Errors every layer may raise (this module imports nothing of rlhfkit, so models and data can use it)."""


class ConfigError(ValueError):
    """A config value or file the user must fix; the message says which and how."""
