"""Pure tensor math of RLHF (imports only torch). See docs/algorithms.md for formula -> function."""

from rlhfkit.algos.advantages import (
    broadcast_to_tokens,
    discounted_returns,
    gae_advantages,
    grpo_advantages,
    nonuniform_groups,
    reinforce_baseline_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    sequence_returns,
)
from rlhfkit.algos.diversity import distinct_n, length_quantiles, perplexity, repeated_ngram_fraction
from rlhfkit.algos.ensemble import ensemble_reward
from rlhfkit.algos.dpo import (
    PREFERENCE_LOSSES,
    PreferenceInputs,
    PreferenceLoss,
    dpo_loss,
    ipo_loss,
    preference_loss,
    simpo_loss,
)
from rlhfkit.algos.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    AdaptivePenaltyCoef,
    FixedKLController,
    kl_divergence,
    kl_shaped_rewards,
    last_valid_index,
)
from rlhfkit.algos.logprobs import entropy_from_logits, logprobs_from_logits
from rlhfkit.algos.losses import (bradley_terry_nll, entropy_bonus, entropy_loss, kl_loss, pairwise_reward_loss,
                                  sft_loss)
from rlhfkit.algos.masking import (
    AGG_MODES,
    aggregate_loss,
    aggregation_normalizer,
    explained_variance,
    masked_count,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from rlhfkit.algos.policy_losses import (
    POLICY_LOSSES,
    PolicyLossInputs,
    compute_policy_loss,
    register_policy_loss,
)
from rlhfkit.algos.ranking import ranking_loss, ranking_pairs
from rlhfkit.algos.ppo import ppo_penalty_loss, ppo_policy_loss, value_loss
from rlhfkit.algos.prime import implicit_process_rewards, prime_advantages, prime_prm_loss
from rlhfkit.algos.registry import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    compute_advantages,
    register_advantage_estimator,
)
from rlhfkit.algos.running import MovingAverageBaseline, RunningMoments, normalize_and_clip_scores, scale_by_return_std
from rlhfkit.algos.trpo import (
    conjugate_gradient,
    fisher_vector_product,
    flat_grad,
    flat_params,
    mean_kl_old_new,
    set_flat_params,
    surrogate_advantage,
    trpo_step,
)

__all__ = [
    "ensemble_reward",
    # masking and aggregation
    "AGG_MODES", "aggregate_loss", "aggregation_normalizer", "explained_variance", "masked_count",
    "masked_mean", "masked_sum", "masked_var", "masked_whiten",
    # logprobs
    "entropy_from_logits", "logprobs_from_logits",
    # KL
    "KL_ESTIMATORS", "AdaptiveKLController", "AdaptivePenaltyCoef", "FixedKLController", "kl_divergence",
    "kl_shaped_rewards", "last_valid_index",
    # advantages
    "broadcast_to_tokens", "discounted_returns", "gae_advantages", "grpo_advantages", "nonuniform_groups",
    "reinforce_baseline_advantages", "reinforce_pp_advantages", "reinforce_pp_baseline_advantages",
    "rloo_advantages", "sequence_returns",
    "ADVANTAGE_ESTIMATORS", "AdvantageInputs", "compute_advantages", "register_advantage_estimator",
    # losses
    "POLICY_LOSSES", "PolicyLossInputs", "compute_policy_loss", "register_policy_loss",
    "ppo_penalty_loss", "ppo_policy_loss", "value_loss", "entropy_bonus", "entropy_loss", "kl_loss",
    "pairwise_reward_loss", "sft_loss", "bradley_terry_nll", "ranking_loss", "ranking_pairs",
    # PRIME
    "implicit_process_rewards", "prime_advantages", "prime_prm_loss",
    # running statistics
    "MovingAverageBaseline", "RunningMoments", "normalize_and_clip_scores", "scale_by_return_std",
    # response statistics
    "distinct_n", "length_quantiles", "perplexity", "repeated_ngram_fraction",
    # direct preference losses (DPO, cDPO, IPO, SimPO)
    "PREFERENCE_LOSSES", "PreferenceInputs", "PreferenceLoss", "dpo_loss", "ipo_loss", "preference_loss",
    "simpo_loss",
    # TRPO
    "conjugate_gradient", "fisher_vector_product", "flat_grad", "flat_params", "mean_kl_old_new",
    "set_flat_params", "surrogate_advantage", "trpo_step",
]
