"""The configuration of `rlhfkit rl`: one dataclass, one field per knob, YAML 1:1 (run-health
settings nested under `health:` in YAML, flat `--health-*` flags on the command line)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from rlhfkit.algos.kl import KL_ESTIMATORS
from rlhfkit.algos.masking import AGG_MODES
from rlhfkit.config import ConfigError, option
from rlhfkit.reporting.health import DETECTOR_NAMES, HealthConfig
from rlhfkit.rollout.engine import ENGINES
from rlhfkit.rollout.options import RemoteRewardOptions
from rlhfkit.trainers.algorithms import ALGORITHMS
from rlhfkit.trainers.presets import PRESETS, apply_preset

AGGREGATIONS = AGG_MODES  # the registry's names, never retyped


def _health_options():
    """`health_<name>` fields, one per HealthConfig field (thresholds, windows, policies)."""
    hints = typing.get_type_hints(HealthConfig)
    return [(f"health_{f.name}", hints[f.name],
             option(f.default, f"run health: {f.name.replace('_', ' ')} (docs/health/README.md)", group="run health"))
            for f in dataclasses.fields(HealthConfig)]


# Which thresholds belong to which detector, for the nested `health:` YAML section.
_PREFIX = {"kl_runaway": "kl_", "entropy_collapse": "entropy_", "reward_hacking": "hacking_",
           "value_instability": "value_", "stalled": "stalled_", "clipfrac_high": "clipfrac_",
           "overoptimization": "overopt_"}


# The run-health settings as flat fields, so YAML keys and CLI flags stay 1:1 with the config.
HealthOptions = dataclasses.make_dataclass("HealthOptions", _health_options(), kw_only=True)


@dataclass(kw_only=True)
class RLConfig(HealthOptions, RemoteRewardOptions):
    """`rlhfkit rl --algo NAME`: optimize a policy against a reward model or function."""

    # --- what to train, on what, judged by what
    policy: str = option(help="starting policy (usually the SFT output folder): local folder or hub name")
    prompts: str = option(help="prompts: `prompt` or chat `messages` rows (.jsonl/.json/.parquet/.csv/folder/hub); "
                               "extra fields such as `answer` reach reward functions")
    output: str = option(help="output folder (metrics.jsonl, checkpoints/, final/)")
    algo: str = option("ppo", "the RL algorithm (docs/rl/README.md)", choices=tuple(ALGORITHMS))
    preset: str | None = option(None, "a named set of defaults that explicit settings override: "
                                      + ", ".join(PRESETS) + " (docs/rl/ppo-max.md)", choices=(None, *PRESETS))
    reward_model: tuple[str, ...] = option((), "reward model folder (saved by `rlhfkit rm`, or any "
                                               "AutoModelForSequenceClassification with num_labels=1); repeat "
                                               "the flag for an ensemble (reward_ensemble_k)", append=True)
    reward_ensemble_k: float = option(0.0, "with several reward models: the reward is their mean - this x their "
                                           "standard deviation (0: the mean; a conservative reward for k > 0)")
    reward_fn: str | None = option(None, "reward function instead of a model: path/to/file.py:fn, module:fn or "
                                         "exact_match; called as fn(prompts, responses, **fields) -> list of floats")
    gold_fn: str | None = option(None, "optional second function logged as reward/gold_mean (never trained on): "
                                       "the true reward of a synthetic task, to see reward hacking")
    critic: str | None = option(None, "critic initialisation: a folder; default: the reward model (PPO-max) when "
                                      "given, else the policy (fresh zero head)")
    prompt_field: str | None = option(None, "name of the prompt field when it is not `prompt` / `messages`")
    # --- rollout
    prompts_per_step: int = option(8, "prompts sampled per RL step")
    n: int | None = option(None, "responses per prompt, in consecutive groups (default: the algorithm's; "
                                 "1 for ppo/reinforce, 4 for group methods); YAML key `n`",
                           flag="--samples-per-prompt", aliases=("--num-samples",))
    max_prompt_length: int = option(256, "longer prompts are truncated from the left or dropped (see overlong)")
    overlong: str = option("truncate", "over-long prompts: truncate or drop (counted)", choices=("truncate", "drop"))
    max_new_tokens: int = option(64, "response length limit")
    temperature: float = option(1.0, "sampling temperature; logprobs are taken at the same temperature")
    top_p: float = option(1.0, "nucleus sampling")
    top_k: int = option(0, "top-k sampling (0 = off)")
    stop_strings: tuple[str, ...] = option((), "extra strings that end a response")
    seeded_sampling: bool = option(False, "sample each response from its own key (seed, step, row): the same "
                                          "samples whatever the batch split or number of ranks (docs/distributed.md)")
    # --- optimisation
    steps: int = option(100, "RL steps (rollout + update)")
    ppo_epochs: int | None = option(None, "passes over each batch of experience (default: the algorithm's; 2 for "
                                          "ppo and ppo-penalty, 1 for the others)")
    minibatch_size: int | None = option(None, "sequences per optimizer step (default: the whole batch)")
    micro_batch_size: int | None = option(None, "sequences per forward/backward (gradient accumulation; "
                                                "the gradient equals the whole minibatch's)")
    micro_batch_tokens: int = option(0, "token budget per forward/backward: micro-batches of rows whose valid "
                                        "(prompt + response) tokens fit in it, a longer row alone; 0 = "
                                        "micro_batch_size rows; the gradient equals the whole minibatch's")
    padding_free: bool = option(True, "run the update's and the rollout's forwards on packed rows (only valid "
                                      "tokens, no attention across rows) for models where that is exact; "
                                      "off: padded rows (docs/rl/README.md#padding-free-forwards)")
    lr: float = option(1e-6, "policy learning rate (AdamW)")
    critic_lr: float | None = option(None, "critic learning rate (default: 5 x lr)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_steps: int = option(0, "linear learning-rate warm-up, in optimizer steps")
    max_grad_norm: float = option(1.0, "global gradient-norm clip per model (PPO-max); 0 disables")
    loss_agg: str | None = option(None, "how token losses become one number (default: the algorithm's, token-mean "
                                        "for all but gspo)", choices=(None, *AGGREGATIONS))
    # --- policy loss
    clip_eps: float | None = option(None, "ratio clip of the policy loss (low side, and high side unless "
                                          "clip_eps_high); default: the algorithm's, 0.2 for PPO-style losses")
    clip_eps_high: float | None = option(None, "upper clip (DAPO clip-higher, e.g. 0.28); default: the algorithm's, "
                                               "else clip_eps")
    dual_clip: float | None = option(None, "dual-clip constant c > 1 bounding the loss for negative advantages")
    penalty_coef: float = option(0.1, "ppo-penalty: initial beta of the KL(old||new) penalty")
    penalty_target: float = option(0.01, "ppo-penalty: KL(old||new) target that adapts beta")
    max_kl: float = option(0.01, "trpo: trust region, the largest mean KL(old||new) per token a step may take")
    damping: float = option(0.1, "trpo: damping added to the Fisher matrix (F + damping*I)")
    cg_iters: int = option(10, "trpo: conjugate-gradient iterations")
    backtrack_ratio: float = option(0.8, "trpo: line-search shrink factor per backtrack")
    max_backtracks: int = option(10, "trpo: line-search candidates before the step is refused")
    entropy_coef: float = option(0.0, "entropy bonus weight")
    ptx_coef: float = option(0.0, "PPO-ptx: weight of an SFT loss on ptx_data mixed into the policy loss")
    ptx_data: str | None = option(None, "demonstrations for PPO-ptx (any `rlhfkit sft` format)")
    # --- KL to the reference
    kl_coef: float = option(0.05, "beta: initial KL coefficient (0 = no reference model is loaded)")
    kl_target: float | None = option(None, "adaptive KL: per-sequence KL target (Ziegler et al.); None = fixed beta")
    kl_horizon: int = option(10000, "adaptive KL horizon in samples")
    kl_estimator: str | None = option(None, "KL estimator (default: the algorithm's for its placement, k1 in the "
                                            "reward, k3 in the loss)", choices=(None, *KL_ESTIMATORS))
    kl_placement: str | None = option(None, "reward (per token), reward-end (summed, at the last token) or loss "
                                            "(default: the algorithm's)", choices=(None, "reward", "reward-end", "loss"))
    # --- advantages and rewards
    gamma: float = option(1.0, "discount")
    lam: float = option(0.95, "GAE lambda")
    whiten_advantages: bool | None = option(None, "whiten advantages over the batch (default: the algorithm's)")
    normalize_rewards: bool = option(False, "PPO-max: normalize scores by running mean/std")
    reward_clip: float | None = option(None, "PPO-max: clip (normalized) scores to [-c, c]")
    scale_rewards: bool = option(False, "PPO-max reward scaling: divide the rewards by the running std of the "
                                        "discounted returns (no mean shift)")
    grpo_std_normalize: bool = option(True, "GRPO: divide by the group std (False = Dr. GRPO)")
    drop_uniform_groups: bool = option(False, "DAPO dynamic sampling: drop groups whose scores are all equal")
    baseline_decay: float = option(0.9, "reinforce: moving-average baseline decay")
    value_clip: float | None = option(0.2, "value-loss clip range around the old values (None = unclipped)")
    critic_warmup_steps: int = option(0, "PPO-max: steps that train only the critic before the policy moves")
    prime_beta: float = option(0.05, "prime: beta of the implicit process reward beta*log(pi_prm/pi_ref)")
    prime_lr: float | None = option(None, "prime: implicit PRM learning rate (default: lr)")
    # --- models and run
    lora_r: int = option(0, "LoRA rank for the policy (0 = full fine-tuning); the reference is then the "
                            "same model with adapters disabled")
    lora_alpha: int = option(16, "LoRA alpha")
    dtype: str = option("float32", "weights dtype", choices=("float32", "bfloat16", "float16", "auto"))
    device: str = option("auto", "cpu, cuda, ... or auto")
    seed: int = option(0, "random seed (sampling, data order)")
    log_every: int = option(1, "log every N steps")
    save_every: int = option(0, "checkpoint every N steps (0: only at interrupt and the end)")
    resume: bool = option(False, "continue from the newest complete checkpoint in output/checkpoints")
    on_nonfinite: str = option("stop", "on a NaN/inf loss or gradient", choices=("stop", "skip"))
    report_to: tuple[str, ...] = option(("jsonl",), "metric backends: jsonl, tensorboard, wandb")
    trust_remote_code: bool = option(False, "allow model code from the hub (only for models you trust)")
    fsdp: bool = option(False, "shard weights, gradients and optimizer state over the ranks of a torchrun launch "
                               "(FSDP2 fully_shard), for models that do not fit one device (docs/distributed.md)")
    fsdp_param_dtype: str | None = option(None, "with fsdp: compute dtype (mixed precision; gradients reduced in "
                                                "float32)", choices=(None, "bfloat16", "float16"))
    fsdp_cpu_offload: bool = option(False, "with fsdp: keep shards and optimizer state in CPU memory (GPU runs)")
    probe_every: int = option(10, "held-out probe every N steps (0: none): fixed prompts and sampling keys, "
                                  "measured against the reward, the gold reward and a reference (docs/health/README.md)")
    probe_size: int = option(64, "prompts in the probe")
    probe_data: str | None = option(None, "the probe's prompts (held out from training); default: a fixed sample "
                                          "of the training prompts")
    probe_kl_penalty: float = option(0.05, "best checkpoint without a gold reward: the probe's score - this x its "
                                           "KL to the reference")
    engine: str = option("native", "rollout engine that samples the responses (docs/rl/README.md#rollout-engines)",
                         choices=tuple(ENGINES))

    # `rlhfkit rl --help` sections, in order; the health_* fields form the last one ("run health").
    ARG_GROUPS: typing.ClassVar[dict] = {
        "what to train, on what, judged by what": (
            "policy", "prompts", "output", "algo", "preset", "reward_model", "reward_ensemble_k", "reward_fn", "gold_fn", "critic", "prompt_field"),
        "rewards served elsewhere": (
            "reward_url", "reward_batch_size", "reward_concurrency", "reward_timeout", "reward_retries",
            "reward_on_error", "reward_judge_url", "reward_judge_model", "reward_judge_template",
            "reward_judge_api_key_env", "reward_judge_weight"),
        "sampling": ("prompts_per_step", "n", "max_prompt_length", "overlong", "max_new_tokens", "temperature",
                     "top_p", "top_k", "stop_strings", "seeded_sampling", "engine"),
        "optimization": ("steps", "lr", "weight_decay", "warmup_steps", "max_grad_norm", "loss_agg",
                         "minibatch_size", "micro_batch_size", "micro_batch_tokens", "padding_free", "entropy_coef",
                         "ptx_coef", "ptx_data"),
        "KL to the reference": ("kl_coef", "kl_target", "kl_horizon", "kl_estimator", "kl_placement"),
        "policy loss (PPO, TRPO, PRIME)": (
            "ppo_epochs", "clip_eps", "clip_eps_high", "dual_clip", "penalty_coef", "penalty_target", "max_kl",
            "damping", "cg_iters", "backtrack_ratio", "max_backtracks", "prime_beta", "prime_lr"),
        "advantages and rewards": ("gamma", "lam", "whiten_advantages", "normalize_rewards", "reward_clip", "scale_rewards",
                                   "grpo_std_normalize", "drop_uniform_groups", "baseline_decay"),
        "critic": ("critic_lr", "value_clip", "critic_warmup_steps"),
        "models": ("lora_r", "lora_alpha", "dtype", "device", "trust_remote_code"),
        "distributed": ("fsdp", "fsdp_param_dtype", "fsdp_cpu_offload"),
        "held-out probe and best checkpoint": ("probe_every", "probe_size", "probe_data", "probe_kl_penalty"),
        "logging and checkpoints": ("seed", "log_every", "save_every", "resume", "on_nonfinite", "report_to"),
    }

    @staticmethod
    def flatten_values(values: dict, source: str = "config") -> dict:
        """A YAML `health:` section -> the flat health_* fields. Accepted shapes:
        `health: {kl_runaway: {policy: stop, kl_max: 30}, cooldown: 10}` (per detector: its policy
        and thresholds) or `health: {kl_max: 30}`; flat `health_kl_max: 30` keys work too."""
        if "health" not in values:
            return values
        values = dict(values)
        section = values.pop("health") or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: `health` must be a mapping (e.g. health: {{kl_runaway: {{policy: stop}}}}), "
                              f"got {type(section).__name__}")
        for key, value in section.items():
            if key in DETECTOR_NAMES and isinstance(value, dict):
                for name, v in value.items():
                    values[f"health_{key}_policy" if name == "policy" else f"health_{name}"] = v
            else:
                values[f"health_{key}"] = value
        return values

    @staticmethod
    def nest_values(values: dict) -> dict:
        """The inverse of `flatten_values`, for the saved config.yaml: health_* fields under `health:`,
        each detector's policy and thresholds under its name."""
        out, health = {}, {}
        for key, value in values.items():
            if not key.startswith("health_"):
                out[key] = value
                continue
            name = key.removeprefix("health_")
            owner = next((d for d in DETECTOR_NAMES if name == f"{d}_policy" or name.startswith(_PREFIX[d])), None)
            if owner is None:
                health[name] = value
            else:
                health.setdefault(owner, {})["policy" if name == f"{owner}_policy" else name] = value
        return {**out, "health": health}

    def __post_init__(self):
        from rlhfkit.trainers.algorithms import get_algorithm

        if self.preset is not None:
            apply_preset(self, getattr(self, "_given", set()))
        spec = get_algorithm(self.algo)
        self.reward_model = (self.reward_model,) if isinstance(self.reward_model, str) \
            else tuple(self.reward_model or ())
        if self.reward_ensemble_k < 0 or (self.reward_ensemble_k > 0 and len(self.reward_model) < 2):
            raise ConfigError(f"reward_ensemble_k {self.reward_ensemble_k}: must be >= 0, and > 0 only with two or "
                              "more reward models (--reward-model a --reward-model b)")
        if self.reward_model and self.reward_fn is not None:
            raise ConfigError("give at most one of --reward-model (a folder) or --reward-fn (file.py:function); "
                              "add more sources with --reward-url or --reward-judge-url")
        if not self.reward_model and self.reward_fn is None and not self.reward_url and not self.reward_judge_url:
            raise ConfigError("give a reward: --reward-model (a folder), --reward-fn (file.py:function), "
                              "--reward-url (a reward service) or --reward-judge-url (a judge)")
        self.check_remote_rewards()
        n = self.n or spec.n
        if spec.n > 1 and n < 2:
            raise ConfigError(f"{self.algo} compares samples of the same prompt: --samples-per-prompt (n) must be >= 2, got {n}")
        batch = self.prompts_per_step * n
        from rlhfkit.trainers.algorithms import default_minibatch_size

        mb = default_minibatch_size(self, spec, batch)
        if mb > batch or batch % mb:
            raise ConfigError(f"minibatch_size {mb} must divide the batch of prompts_per_step x n = {batch}")
        if self.micro_batch_size is not None and (self.micro_batch_size > mb or mb % self.micro_batch_size):
            raise ConfigError(f"micro_batch_size {self.micro_batch_size} must divide minibatch_size {mb}")
        if self.micro_batch_tokens < 0:
            raise ConfigError(f"micro_batch_tokens must be >= 0 (0 = micro-batches of micro_batch_size rows), "
                              f"got {self.micro_batch_tokens}")
        if self.micro_batch_tokens and self.micro_batch_size is not None:
            raise ConfigError("give micro_batch_tokens (a token budget) or micro_batch_size (rows), not both")
        if self.kl_coef < 0 or self.temperature <= 0 or self.max_new_tokens < 1:
            raise ConfigError("kl_coef must be >= 0, temperature > 0 and max_new_tokens >= 1")
        if self.kl_target is not None and (self.kl_target <= 0 or self.kl_coef == 0):
            raise ConfigError("kl_target (adaptive KL) needs kl_target > 0 and an initial kl_coef > 0")
        if self.ptx_coef > 0 and not self.ptx_data:
            raise ConfigError("ptx_coef > 0 needs --ptx-data (demonstrations for the pretraining loss)")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ConfigError("dual_clip must be > 1 (e.g. 3.0)")
        health = HealthConfig.from_config(self)  # validates every health_* field
        if any(getattr(health, f"{d}_policy") == "rollback" for d in DETECTOR_NAMES) and self.save_every <= 0:
            raise ConfigError("a health policy 'rollback' needs --save-every > 0 (checkpoints to roll back to)")

def _remember_given(init):
    """Wrap the dataclass __init__ to note which fields the caller set, so a preset fills only the others."""
    def __init__(self, **kwargs):
        object.__setattr__(self, "_given", set(kwargs))
        init(self, **kwargs)
    __init__.__doc__ = init.__doc__
    return __init__


RLConfig.__init__ = _remember_given(RLConfig.__init__)
