"""The config fields of rewards served elsewhere (docs/reward-service.md), shared by `rl` and `eval`.

A config that inherits `RemoteRewardOptions` gets the `reward_*` fields that `with_remote_rewards`
reads, and `check_remote_rewards()` for its `__post_init__`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import ConfigError, option


@dataclass(kw_only=True)
class RemoteRewardOptions:
    """Reward services (`rlhfkit serve-reward` or any service of its protocol) and an LLM judge."""

    reward_url: tuple[str, ...] = option((), "reward services (`rlhfkit serve-reward` or any service speaking its "
                                             "protocol): URL or URL:weight, comma-separated or a YAML list; their "
                                             "weighted scores are summed with --reward-model / --reward-fn (weight 1)")
    reward_batch_size: int = option(32, "rows per request to a reward service")
    reward_concurrency: int = option(8, "requests in flight at once per reward service or judge")
    reward_timeout: float = option(60.0, "seconds before a reward request counts as failed")
    reward_retries: int = option(3, "retries of a failed reward request, with exponential backoff (0.5 s, 1 s, ...)")
    reward_on_error: str = option("stop", "after the retries: stop (checkpoint of the last good step, then exit), "
                                          "zero (score the rows 0) or retry (keep retrying)",
                                  choices=("stop", "zero", "retry"))
    reward_judge_url: str | None = option(None, "OpenAI-compatible chat-completions endpoint (e.g. "
                                                "http://host:8000/v1) that judges each response with a rubric")
    reward_judge_model: str | None = option(None, "the judge's model name (the request's `model`)")
    reward_judge_template: str | None = option(None, "rubric file with {prompt} and {response}; the judge's last "
                                                     "number, clamped to 1-10, becomes (x - 1) / 9 (default: a "
                                                     "built-in 1-10 rubric)")
    reward_judge_api_key_env: str | None = option(None, "name of the environment variable holding the judge's API key "
                                                        "(the key is never logged or saved)")
    reward_judge_weight: float = option(1.0, "weight of the judge's score in the summed reward")

    def check_remote_rewards(self) -> None:
        from rlhfkit.rollout.remote import parse_reward_url

        for spec in self.reward_url:
            try:
                parse_reward_url(spec)
            except ValueError as err:
                raise ConfigError(str(err)) from None
        if self.reward_batch_size < 1 or self.reward_concurrency < 1 or self.reward_timeout <= 0 \
                or self.reward_retries < 0:
            raise ConfigError("reward_batch_size and reward_concurrency must be >= 1, reward_timeout > 0 and "
                              "reward_retries >= 0")
        if self.reward_judge_url and not self.reward_judge_model:
            raise ConfigError("--reward-judge-url needs --reward-judge-model (the model name the endpoint serves)")
