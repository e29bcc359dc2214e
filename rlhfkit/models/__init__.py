"""Models: load HF causal LMs and tokenizers, scalar heads (critic, reward model), response
logprobs from masked forward passes, LoRA, and tiny in-process models for tests.

Importing this package loads torch but not transformers / peft (they load on first use).
"""

from rlhfkit.models.forward import position_ids_from_mask, response_logits, response_logprobs, token_logprobs
from rlhfkit.models.loading import (atomic_dir, check_vocab_fits, freeze, load_causal_lm, load_reference,
                                    load_tokenizer, resolve_dtype, save_model)
from rlhfkit.models.lora import adapters_disabled, apply_lora, is_lora, merged_state_dict
from rlhfkit.models.scalar_head import (ScalarHeadModel, load_critic, load_reward_model,
                                        load_scalar_model)
from rlhfkit.models.tokenizer_match import check_critic_base, same_tokenizer, tokenizer_differences

__all__ = [
    "ScalarHeadModel", "adapters_disabled", "apply_lora", "atomic_dir", "check_critic_base", "check_vocab_fits",
    "freeze", "is_lora", "load_causal_lm", "load_critic", "load_reference",
    "load_reward_model", "load_scalar_model", "load_tokenizer", "merged_state_dict", "position_ids_from_mask",
    "resolve_dtype", "response_logits", "response_logprobs", "same_tokenizer", "save_model", "token_logprobs",
    "tokenizer_differences",
]
