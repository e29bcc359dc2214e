"""Presets: named sets of RL defaults. Fields a run sets itself (flag, YAML key or keyword) win; the
saved config.yaml records the preset's name and every value it resolved to.

A preset is data: field -> value. `REQUIRES` names the field a value needs before it applies
(PPO-ptx only mixes in pretraining data when the run gives some).
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # PPO-max (Zheng et al. 2023, "Secrets of RLHF in Large Language Models Part I: PPO", sec. 5):
    # each entry is one element of the recipe; docs/rl/ppo-max.md says what each does and why.
    "ppo-max": {
        "algo": "ppo",
        "kl_placement": "reward",       # token-level KL penalty in the reward
        "kl_coef": 0.05,
        "normalize_rewards": True,      # reward normalization (running mean / std of the scores) ...
        "reward_clip": 5.0,             # ... and clipping of the normalized scores
        "scale_rewards": True,          # reward scaling: / running std of the returns, no mean shift
        "whiten_advantages": True,      # advantage normalization
        "value_clip": 0.2,              # value-loss clipping
        "critic_warmup_steps": 10,      # critic initialized from the reward model, trained alone first
        "max_grad_norm": 1.0,           # global gradient clipping
        "ptx_coef": 0.5,                # PPO-ptx, when pretraining data (ptx_data) is given
    },
}

# A preset value applies only when the run gives this other field.
REQUIRES = {"ptx_coef": "ptx_data"}


def apply_preset(cfg, given: set[str]) -> None:
    """Fill the fields of `cfg` that the run did not set (`given`) from `cfg.preset`, in place."""
    for name, value in PRESETS[cfg.preset].items():
        needs = REQUIRES.get(name)
        if name in given or (needs is not None and not getattr(cfg, needs)):
            continue
        setattr(cfg, name, value)
