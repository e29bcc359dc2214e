"""Every reward source of a run as one scorer: a local model or function, reward services, a judge.

`with_remote_rewards(cfg, local)` reads the `reward_*` fields of a config (`RLConfig`; `eval` may
use the same); `combine_scorers` is the same from plain arguments.
"""

from __future__ import annotations

from rlhfkit.rollout.judge import JudgeScorer, load_template
from rlhfkit.rollout.remote import RemoteScorer, RequestPolicy, WeightedScorer, parse_reward_url


def combine_scorers(local=None, urls=(), judge=None, batch_size: int = 32, timeout: float = 60.0,
                    retries: int = 3, on_error: str = "stop", concurrency: int = 8):
    """One scorer from an optional local scorer (weight 1), reward-service URL specs ("URL" or
    "URL:weight") and an optional (judge scorer, weight). A lone source of weight 1 is returned
    as it is, so its scores are exactly its own."""
    parts = [(local, 1.0)] if local is not None else []
    for spec in urls:
        url, weight = parse_reward_url(spec)
        policy = RequestPolicy(timeout=timeout, retries=retries, on_error=on_error, concurrency=concurrency)
        parts.append((RemoteScorer(url, batch_size=batch_size, policy=policy), weight))
    if judge is not None:
        parts.append(judge)
    if not parts:
        raise ValueError("no reward source: give a reward model, a reward function, a reward URL or a judge")
    if len(parts) == 1 and parts[0][1] == 1.0:
        return parts[0][0]
    return WeightedScorer(parts)


def with_remote_rewards(cfg, local=None):
    """The scorer of a run: `local` (its reward model or function, or None) plus the reward services and
    the judge named by a config's `reward_*` fields (those of `RLConfig`; a config without them, such
    as today's `EvalConfig`, gets `local` back, None included). Used by `rl` and meant for `eval` alike."""
    def get(name, default=None):
        return getattr(cfg, name, default)

    policy_kw = dict(timeout=get("reward_timeout", 60.0), retries=get("reward_retries", 3),
                     on_error=get("reward_on_error", "stop"), concurrency=get("reward_concurrency", 8))
    judge = None
    if get("reward_judge_url"):
        judge = (JudgeScorer(get("reward_judge_url"), get("reward_judge_model"),
                             template=load_template(get("reward_judge_template")),
                             api_key_env=get("reward_judge_api_key_env"), policy=RequestPolicy(**policy_kw)),
                 float(get("reward_judge_weight", 1.0)))
    urls = tuple(get("reward_url", ()) or ())
    if not urls and judge is None:
        return local  # nothing remote (None stays None: `eval` may run without a reward)
    return combine_scorers(local, urls=urls, judge=judge, batch_size=get("reward_batch_size", 32), **policy_kw)
