"""Pure tensor math of RLHF (imports only torch)."""

from rlhfkit.algos.logprobs import entropy_from_logits, logprobs_from_logits

__all__ = ["entropy_from_logits", "logprobs_from_logits"]
