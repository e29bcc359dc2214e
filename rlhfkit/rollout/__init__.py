"""Rollout: sample responses (an `Engine`: `native` in RL runs, HF generate when `make_experience` gets
none), build the batch of experience, score it.

Importing this package loads torch but not transformers (it loads on first use).
"""

from rlhfkit.rollout.collect import make_experience
from rlhfkit.rollout.engine import ENGINES, Engine, HFEngine, make_engine
from rlhfkit.rollout.experience import Experience
from rlhfkit.rollout.generation import GenerationResult, GenerationSettings, eos_token_ids, eval_mode, generate
from rlhfkit.rollout.reward_model import RewardModelScorer, load_reward_scorer
from rlhfkit.rollout.scoring import (BUILTIN_REWARDS, FunctionScorer, check_scores, exact_match, extract_final_answer,
                                     load_reward_function)

__all__ = [
    "BUILTIN_REWARDS", "ENGINES", "Engine", "Experience", "HFEngine", "make_engine", "FunctionScorer", "GenerationResult", "GenerationSettings", "RewardModelScorer",
    "check_scores", "eos_token_ids", "eval_mode", "exact_match", "extract_final_answer", "generate",
    "load_reward_function", "load_reward_scorer", "make_experience",
]
