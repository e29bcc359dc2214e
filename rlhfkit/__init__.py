"""rlhfkit: RLHF post-training for Hugging Face causal language models.

`import rlhfkit` stays light: subpackages (and torch / transformers) load on first use.
"""

__version__ = "0.1.0"
