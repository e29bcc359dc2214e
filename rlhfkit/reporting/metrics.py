"""Every metric name rlhfkit logs, defined once (STYLE rule 7).

A row of `metrics.jsonl` is `{"step": int, "<namespace>/<name>": number | null, ...}`; a health
event is `{"step": int, "event": name, "message": str, ...extra}`. Trainers log only names that
are keys of `METRICS` and emit only events that are keys of `EVENTS`; a name that is not in every
run of its stages says when it is logged (`MetricDef.when`, `EVENT_WHEN`).
`tests/trainers/test_glossary_guard.py` runs every algorithm and checks both directions.
`docs/metrics.md` is the same table, produced by `metrics_markdown()`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricDef:
    """One logged quantity.

    name: the key in metrics.jsonl, e.g. "kl/mean".
    definition: one line saying exactly what is computed and over what it is averaged.
    unit: "nats", "seconds", "fraction", "tokens", "count", "reward" (the reward's own scale), ...
    watch: what a healthy run looks like and which failure the number reveals.
    stages: which trainers log it ("sft", "rm", "rl", "dpo").
    when: "" when every run of those stages logs it (for "rl": at least with some algorithm);
        otherwise the condition under which it is logged, e.g. "critic_warmup_steps > 0".
    """

    name: str
    definition: str
    unit: str
    watch: str
    stages: tuple[str, ...] = ("rl",)
    when: str = ""


def _defs(*items: tuple) -> dict[str, MetricDef]:
    out: dict[str, MetricDef] = {}
    for item in items:
        metric = MetricDef(*item)
        if metric.name in out:
            raise ValueError(f"metric {metric.name!r} is defined twice in rlhfkit/reporting/metrics.py")
        out[metric.name] = metric
    return out


_ALL = ("sft", "rm", "rl", "dpo")
_RETURNED = "never written to metrics.jsonl: a key of the dict train_sft / train_rm return"

METRICS: dict[str, MetricDef] = _defs(
    ("step",
     "Optimizer step for SFT and RM; completed RL iteration (rollout, scoring, update) for RL. "
     "Counts from 1.",
     "count", "The x-axis of every plot; a resumed run continues the count without repeating a step.", _ALL),
    # -- reward: one number per response (scores, shape (B,)), before KL shaping -----------------
    ("reward/score_mean",
     "Mean over the batch's responses of `scores` (B,), from the reward model or reward function, "
     "before normalization and KL shaping.",
     "reward", "Should rise. If it keeps rising while reward/gold_mean stalls or falls, the policy is "
     "exploiting the reward model (reward hacking)."),
    ("reward/score_std",
     "Standard deviation of `scores` (B,) over the batch.",
     "reward", "Falling toward 0 means the responses have become alike (collapse); for group "
     "algorithms (RLOO, GRPO) equal scores within a group carry no learning signal."),
    ("reward/score_max", "Largest score in the batch.", "reward",
     "A max far above the mean with a flat mean can point to a few outliers the reward model over-rates."),
    ("reward/score_min", "Smallest score in the batch.", "reward",
     "Watch with score_max: the spread of what the policy produces."),
    ("reward/gold_mean",
     "Mean of the gold reward (gold_fn, e.g. a bundled task's hidden reward) on the same responses; "
     "never used for training.",
     "reward", "The true measure of progress: should rise with score_mean. Score up and gold down is "
     "reward hacking.", ("rl",), "gold_fn is set"),
    ("reward/normalized_mean",
     "Mean of the scores after running-moment normalization (PPO-max), before the reward_clip clamp "
     "(the estimator receives the clamped scores).",
     "reward", "Hovers near 0 once the running moments settle; a drift far from 0 means the moments "
     "are lagging the score distribution.", ("rl",), "normalize_rewards is true"),
    ("reward/ensemble_std", "Disagreement of a reward-model ensemble on the step's responses: the members' "
     "standard deviation per response (each member normalized), averaged (this rank's rows).", "reward",
     "Rising: the policy's answers are where the reward models disagree (where a single one is least "
     "trustworthy); reward_ensemble_k > 0 pays less for them.", ("rl",), "two or more reward models"),
    ("reward/remote_failures",
     "Failed requests to reward services and judges during the step (no connection, timeout, HTTP error, "
     "an answer that is not one finite number per row), retried ones included; only with --reward-url or "
     "--reward-judge-url.",
     "count", "Should be 0. A steady trickle means a flaky or overloaded service (raise --reward-timeout, "
     "lower --reward-batch-size); see docs/reward-service.md.", ("rl",), "reward_url or reward_judge_url is set"),
    ("reward/remote_retries",
     "Requests to reward services and judges re-sent after a failure during the step (exponential backoff).",
     "count", "Each retry costs backoff time; many per step slow the run down.", ("rl",),
     "reward_url or reward_judge_url is set"),
    ("reward/remote_zeroed",
     "Rows scored 0 during the step because their request failed after its retries (--reward-on-error zero).",
     "count", "Should be 0: every zeroed row is a training signal that lies.", ("rl",),
     "reward_url or reward_judge_url is set, with reward_on_error zero"),
    # -- KL to the reference model ---------------------------------------------------------------
    ("kl/mean",
     "Per-sequence KL to the reference: the k1 estimator (logprobs - ref_logprobs, unbiased) summed "
     "over response tokens, then averaged over the batch; 0 without a reference model (kl_coef 0).",
     "nats", "Should grow slowly and stay bounded. A steady climb means the policy drifts away from "
     "the SFT model, usually toward text the reward model over-rates; raise the KL coefficient or "
     "lower the KL target."),
    ("kl/coef",
     "Current KL coefficient beta (fixed, or set by the adaptive controller of Ziegler et al. 2019).",
     "1", "With the adaptive controller it rises when kl/mean is above its target and falls below it; "
     "stuck at a bound means the target cannot be met."),
    ("kl/token_mean",
     "The k1 estimator averaged over response tokens (masked mean over the batch), not summed.",
     "nats/token", "Same story as kl/mean without the length effect: use it when response lengths change.",
     ("rl",), "a reference model is loaded (kl_coef > 0, or prime) and the rollout takes the policy's "
     "logprobs (not the single-pass case: ppo_epochs 1, one minibatch, KL in the loss or none)"),
    # -- policy update diagnostics --------------------------------------------------------------
    ("policy/entropy",
     "Entropy of the policy's next-token distribution, averaged over response tokens.",
     "nats/token", "Falls slowly as the policy grows confident. A fast drop toward 0 is entropy "
     "collapse: the policy stops exploring and repeats one answer (raise the entropy bonus or "
     "temperature, lower the learning rate)."),
    ("policy/clipfrac",
     "Fraction of response tokens whose probability ratio pi/pi_old lies outside the clip range "
     "[1-eps_low, 1+eps_high] on the side where the clip takes effect, averaged over minibatches.",
     "fraction", "Typically 0-0.2. Much higher means each update moves the policy too far: lower the "
     "learning rate or ppo_epochs."),
    ("policy/approx_kl",
     "Estimate of KL(pi_old || pi) between the rollout policy and the policy being updated, "
     "token mean of (r - 1) - log r with r = pi/pi_old (k3), averaged over minibatches.",
     "nats/token", "Should stay small (about 0.01-0.05). Large values mean the update steps are too big."),
    ("policy/ratio_mean",
     "Mean probability ratio pi/pi_old over response tokens during the update.",
     "1", "Stays close to 1; far from 1 means the data is stale relative to the policy."),
    ("policy/ratio_max",
     "Largest probability ratio pi/pi_old over a micro-batch's response tokens, averaged (token-"
     "weighted) over the micro-batches and minibatches of the step.",
     "1", "Very large values point to tokens whose probability exploded; the clip bounds their effect."),
    ("policy/dual_clipfrac",
     "Fraction of response tokens where the dual clip (a bound on the loss for negative advantages, "
     "Ye et al. 2020) took effect; 0 when dual_clip is unset.",
     "fraction", "Should be rare; frequent dual clipping means the policy moved far on bad tokens."),
    ("policy/kl",
     "ppo-penalty: token-mean estimate of KL(pi_old || pi), (r - 1) - log r, inside the penalty loss; "
     "it drives policy/penalty_coef.",
     "nats/token", "Should hover near the penalty's KL target."),
    ("policy/pg_loss",
     "ppo-penalty: token-mean surrogate -A * r, the loss without the KL penalty.",
     "1", "Like loss/policy, not a progress measure."),
    ("policy/penalty_coef",
     "ppo-penalty: adaptive coefficient of the KL(pi_old || pi) penalty in the loss (Schulman et al. "
     "2017, section 4).",
     "1", "Rises when policy/kl overshoots its target, falls when it undershoots; oscillating wildly "
     "means the target is hard to meet."),
    # -- losses ------------------------------------------------------------------------------
    ("loss/policy",
     "Policy-gradient loss (clipped surrogate for PPO) after loss aggregation, mean over minibatches; "
     "TRPO: minus the surrogate after the step.",
     "1", "Not a progress measure (it hovers near 0 by design); look for spikes and non-finite values."),
    ("loss/value",
     "Critic loss: 0.5 x (clipped) squared error between values and returns, masked mean over "
     "response tokens.",
     "reward^2", "Falls during critic warmup, then stays level. Growing means the critic cannot track "
     "the returns (lower its learning rate, enable value clipping)."),
    ("loss/kl",
     "The KL estimator aggregated like the policy loss (loss_agg), before its coefficient: the loss "
     "adds kl/coef x this. Mean over minibatches.",
     "nats/token", "Grows with the policy's distance from the reference; kl/coef x loss/kl should stay "
     "small next to loss/policy.", ("rl",), "the KL is in the loss (grpo, or kl_placement loss) and kl_coef > 0"),
    ("loss/entropy",
     "Policy entropy aggregated like the policy loss (loss_agg), before its coefficient: the loss "
     "subtracts entropy_coef x this. Mean over minibatches.",
     "nats/token", "Tracks policy/entropy.", ("rl",), "entropy_coef != 0"),
    ("loss/sft",
     "Pretraining (SFT) cross-entropy on a demonstration micro-batch mixed into the policy loss "
     "(PPO-ptx), token mean before its coefficient ptx_coef, mean over minibatches.",
     "nats/token", "Should stay near the SFT model's loss; rising means RL is eroding what SFT taught.",
     ("rl",), "ptx_coef > 0 (with ptx_data)"),
    # -- critic -------------------------------------------------------------------------------
    ("value/explained_variance",
     "1 - Var(returns - values) / Var(returns) over response tokens.",
     "1", "Rises toward 1 as the critic learns; at or below 0 the critic is no better than a constant."),
    ("value/clipfrac",
     "Fraction of response tokens where value clipping took effect (0 when value_clip is unset).",
     "fraction", "High values mean the critic is held back by the clip range."),
    ("value/mean", "Mean predicted value over response tokens.", "reward",
     "Should follow returns/mean."),
    ("value/mse", "Unclipped mean squared error (values - returns)^2 over response tokens.", "reward^2",
     "Tracks loss/value; a gap between the two means value clipping is active."),
    ("advantages/mean",
     "Mean advantage over response tokens, after the estimator and any whitening.",
     "reward", "About 0 with whitening or group baselines; a persistent offset means a biased baseline."),
    ("advantages/std",
     "Standard deviation of the advantages over response tokens.",
     "reward", "About 1 with whitening; near 0 means there is no learning signal."),
    ("returns/mean", "Mean return (critic target) over response tokens.", "reward",
     "Follows the KL-shaped reward; compare with value/mean."),
    # -- responses ----------------------------------------------------------------------------
    ("response/length_mean",
     "Mean number of response tokens (sum of response_mask per sequence, batch mean).",
     "tokens", "A sudden change (every response at the maximum, or collapsing to a few tokens) often "
     "signals reward hacking or collapse."),
    ("response/length_max", "Longest response in the batch.", "tokens",
     "Pinned at max_new_tokens means some responses never stop."),
    ("response/eos_fraction",
     "Fraction of responses that ended with EOS before max_new_tokens.",
     "fraction", "Should stay high; falling means responses ramble into the length limit."),
    ("response/truncated_fraction",
     "Fraction of responses cut at max_new_tokens without EOS (1 - eos_fraction).",
     "fraction", "Rising truncation biases scores: the reward model sees unfinished text."),
    ("response/length_p10", "10th percentile of the response lengths in the batch (linear interpolation).",
     "tokens", "With p50 and p90: the shape of the length distribution, which a mean hides."),
    ("response/length_p50", "Median response length in the batch.", "tokens",
     "A median drifting from the mean means a long tail of runaway (or collapsed) responses."),
    ("response/length_p90", "90th percentile of the response lengths in the batch.", "tokens",
     "Creeping up toward max_new_tokens while p50 stays: a few responses learned to ramble."),
    ("response/distinct_1",
     "Distinct-1 (Li et al. 2016): distinct token ids / all tokens of the batch's responses.",
     "fraction", "Falling: the policy's vocabulary narrows (collapse, or one phrase the reward likes)."),
    ("response/distinct_2",
     "Distinct-2: distinct token bigrams / all bigrams, each bigram within one response, over the batch.",
     "fraction", "Falling while the score rises is the textbook face of reward hacking (repetitive output); "
     "the reward_hacking detector reads it when there is no gold reward."),
    ("response/repeat_3gram_fraction",
     "Fraction of the batch's responses in which some token 3-gram occurs at least twice.",
     "fraction", "Rising: responses loop (\"very very very\"); read by the reward_hacking detector."),
    ("response/ppl_policy",
     "Perplexity of the sampled responses under the policy: exp(-mean log pi over response tokens), "
     "from the rollout's logprobs (or, on a single pass, the update's forward): no extra forward.",
     "1", "exp(entropy of the samples); collapsing toward 1 means the policy became deterministic.", ("rl",), "every step but a single-pass step without an update (every group dropped)"),
    ("response/ppl_ref",
     "Perplexity of the sampled responses under the reference policy, from ref_logprobs (logged when a "
     "reference is loaded).",
     "1", "Rising far above its start: the policy writes text the SFT model finds unlikely (drift, "
     "reward hacking); MOSS-RLHF watches it with reward and length.", ("rl",), "a reference model is loaded for training (kl_coef > 0, or prime)"),
    ("probe/score_mean", "Mean score of the held-out probe's answers (fixed prompts and sampling keys, every "
     "probe_every steps).", "reward", "Rising with probe/gold_mean is progress; rising alone past a KL budget is "
     "over-optimization.", ("rl",), "probe_every > 0, on probe steps"),
    ("probe/gold_mean", "Mean gold reward of the probe's answers (when gold_fn is given).", "reward",
     "Falling from its best while probe/score_mean rises: the overoptimization detector fires.", ("rl",), "probe_every > 0, on probe steps with a gold_fn"),
    ("probe/gold_se", "Standard error of probe/gold_mean (std / sqrt(probe_size)).", "reward",
     "The unit of the overoptimization detector's gold drop.", ("rl",), "probe_every > 0, on probe steps with a gold_fn"),
    ("probe/gold_std", "Standard deviation of the probe's per-prompt gold (how much quality varies between "
     "prompts).", "reward", "The first probe's value scales the overoptimization detector's smallest drop "
     "(overopt_gold_effect).", ("rl",), "probe_every > 0, on probe steps with a gold_fn"),
    ("probe/gold_drop", "Mean per-prompt drop of the probe's gold from the best earlier probe (the starting "
     "policy's included): same prompts, same sampling keys.", "reward", "Above overopt_gold_drop x "
     "probe/gold_drop_se while probe/score_mean rises and probe/kl_mean has grown overopt_kl_gain nats: the "
     "overoptimization detector fires.", ("rl",),
     "probe_every > 0, on probe steps after the first, with a gold_fn"),
    ("probe/gold_drop_se", "Standard error of probe/gold_drop: std of the per-prompt differences / "
     "sqrt(probe_size) (paired, so much smaller than probe/gold_se while the policy stays close).", "reward",
     "The unit of the overoptimization detector's gold drop.", ("rl",),
     "probe_every > 0, on probe steps after the first, with a gold_fn"),
    ("probe/ensemble_std", "Disagreement of a reward-model ensemble on the probe's answers: the members' "
     "standard deviation per answer, averaged.", "reward", "Growing overopt_disagreement_growth-fold from its "
     "start: the policy left the ground the reward models agree on.", ("rl",),
     "probe_every > 0 and two or more reward models, on probe steps"),
    ("probe/kl_mean", "KL (k1, summed per response, mean over the probe) of the policy to the reference on "
     "the probe's answers; measured even with kl_coef 0.", "nats", "Grows as the policy leaves the reference; "
     "a gold fall only counts with overopt_kl_gain nats more than at the best probe; without gold, beyond "
     "overopt_kl_budget a rising score is suspect.", ("rl",), "probe_every > 0, on probe steps"),
    ("probe/ppl_ref", "Perplexity of the probe's answers under the reference.", "1",
     "Grows when the policy writes text the reference finds unlikely.", ("rl",), "probe_every > 0, on probe steps"),
    ("probe/length_mean", "Mean length of the probe's answers.", "tokens", "A steady change is a policy change, "
     "not sampling noise (fixed prompts and keys).", ("rl",), "probe_every > 0, on probe steps"),
    ("probe/repeat_3gram_fraction", "Share of the probe's answers that repeat a 3-gram.", "fraction",
     "Rising: the answers loop.", ("rl",), "probe_every > 0, on probe steps"),
    ("probe/distinct_2", "Distinct-2 over the probe's answers.", "fraction", "Falling: the answers narrow.", ("rl",), "probe_every > 0, on probe steps"),
    ("reward/return_std",
     "Running standard deviation of the sequences' discounted returns that the rewards are divided by "
     "(scale_rewards, PPO-max reward scaling).",
     "reward", "Settles after a few steps; a steady climb means the returns' scale keeps growing.", ("rl",), "scale_rewards is true"),
    # -- optimization ------------------------------------------------------------------------
    ("grad/norm",
     "Global L2 norm of the accumulated gradient before clipping. SFT/RM: of the step's one optimizer "
     "step. RL: the policy's, averaged over the step's minibatches and epochs (absent for TRPO, which "
     "takes no optimizer step, and during critic warm-up).",
     "1", "Spikes often precede divergence; a norm always at the clip value means clipping does the steering.",
     _ALL),
    ("grad/critic_norm",
     "Global L2 norm of the critic's gradient before clipping, averaged over the step's minibatches.",
     "1", "Spikes usually come from returns the critic has never seen (e.g. a jump in the scores)."),
    ("lr", "Learning rate of the (policy) optimizer after the scheduler.", "1",
     "Follows the schedule; check warmup and decay did what the config says.", _ALL),
    # -- time ---------------------------------------------------------------------------------
    ("time/step_s", "Wall-clock seconds for the whole step.", "seconds",
     "Total cost; the parts below say where it goes.", _ALL),
    ("time/generate_s",
     "Seconds spent making the step's experience: sampling, the policy / reference / critic "
     "forwards and scoring (make_experience), not only generation.", "seconds",
     "Usually the largest part of an RL step; grows with response length and with the number of "
     "models the algorithm needs."),
    ("time/train_s",
     "Seconds from the end of experience making to the end of the update: reward shaping, "
     "advantages, the optimization epochs (policy and critic) and the KL controller.", "seconds",
     "Grows with ppo_epochs and the number of minibatches."),
    # -- algorithm-specific -------------------------------------------------------------------
    ("prime/prm_loss",
     "PRIME: cross-entropy of the implicit process reward model against the outcome labels.",
     "nats", "Should fall; if it rises the dense token rewards are getting noisier."),
    ("prime/reward_mean",
     "PRIME: mean implicit sequence reward beta * sum_t (log pi_prm - log pi_ref) over the batch.",
     "nats", "Should separate correct from incorrect responses; drifting far from 0 inflates the dense rewards."),
    ("prime/prm_accuracy",
     "PRIME: fraction of responses where the implicit PRM's sequence reward agrees in sign with the "
     "outcome label.",
     "fraction", "Should rise above 0.5; near 0.5 the dense rewards carry little information."),
    ("groups/dropped_fraction",
     "Fraction of prompt groups dropped because all n responses got the same score (DAPO dynamic "
     "sampling).",
     "fraction", "Near 1 means the task is too easy or too hard for the policy: almost no learning signal.",
     ("rl",), "drop_uniform_groups is true and n > 1"),
    # -- SFT and reward-model trainers -------------------------------------------------------
    ("train/loss",
     "SFT: token-mean cross-entropy on response tokens of the training batch. RM: mean pairwise "
     "Bradley-Terry loss -log sigmoid(r_chosen - r_rejected - margin), plus the weighted LM term if "
     "enabled. DPO: mean preference loss of the chosen `loss` (docs/dpo.md).",
     "nats", "Should fall. Falling while eval/loss rises is overfitting.", ("sft", "rm", "dpo")),
    ("eval/loss",
     "The same loss as train/loss on the held-out split.",
     "nats", "The number to trust; stop or regularize when it turns upward.", ("sft", "rm", "dpo")),
    ("eval/ppl", "SFT: exp(eval/loss), the held-out perplexity on response tokens.", "1",
     "Lower is better; compare runs on the same data only.", ("sft",)),
    ("trpo/kl", "TRPO: measured mean KL(old||new) per response token of the accepted step (0 if refused).",
     "nats", "At most max_kl by construction; far below it means the line search backtracked a lot.", ("rl",)),
    ("trpo/surrogate_improvement", "TRPO: increase of the surrogate advantage mean(ratio * A) by the step.",
     "reward", "Positive on accepted steps; 0 when the step was refused.", ("rl",)),
    ("trpo/line_search_steps", "TRPO: backtracks before a step was accepted (max_backtracks if refused).",
     "count", "Usually 0-2; always at the maximum means the quadratic KL model is poor (raise damping).", ("rl",)),
    ("trpo/cg_residual", "TRPO: relative residual |(F + damping I) x - g| / |g| of the conjugate-gradient solve.",
     "1", "Small (< 0.1) means the natural-gradient direction is accurate; raise cg_iters or damping if not.", ("rl",)),
    ("trpo/accepted", "TRPO: fraction of minibatch steps the line search accepted.", "fraction",
     "Near 1; near 0 means every step broke the KL limit or failed to improve the surrogate.", ("rl",)),
    ("train/skipped_minibatches",
     "RL: minibatches skipped this step because a loss or gradient was not finite (--on-nonfinite skip).",
     "count", "Should be 0; anything else means the run is numerically unstable.", ("rl",),
     "on_nonfinite is skip and a loss or gradient was not finite"),
    ("train/tokens", "SFT: number of response (loss) tokens in this step's batch.", "tokens",
     "Steady unless sequence lengths vary a lot; the effective batch size of the loss.", ("sft",)),
    ("train/lm_loss",
     "RM: token-mean cross-entropy of the LM (imitation) term on the chosen responses, before its "
     "coefficient (MOSS-RLHF reward model).",
     "nats", "Should stay near the SFT model's loss.", ("rm",), "lm_coef > 0"),
    ("train/accuracy",
     "RM: fraction of training pairs in the batch with r_chosen > r_rejected; with rankings, the mean over "
     "the batch's prompts of the fraction of each prompt's pairs ordered correctly (each prompt counts once).",
     "fraction", "Well above eval/accuracy means the reward model memorizes pairs.", ("rm",)),
    ("eval/accuracy",
     "RM: fraction of held-out pairs with r_chosen > r_rejected (for rankings: over all their ordered pairs).",
     "fraction", "0.5 is chance. Noisy labels cap it (people agree on 60-75% of pairs); a reward model "
     "barely above chance gives RL little to learn from.", ("rm",)),
    ("eval/ordering_accuracy",
     "RM: fraction of held-out prompts whose responses are all ordered correctly (every pair r_better > "
     "r_worse); equals eval/accuracy for pairs.",
     "fraction", "Falls fast with K: for rankings of many responses it stays well below eval/accuracy.", ("rm",)),
    ("train/ordering_accuracy",
     "RM: fraction of training prompts in the batch whose responses are all ordered correctly.",
     "fraction", "Well above eval/ordering_accuracy means the reward model memorizes rankings.", ("rm",)),
    ("eval/accuracy/<group>",
     "RM with --group-by (or mixed files): eval/accuracy over the held-out pairs of one group (a value of "
     "the grouping field, or the source file).",
     "fraction", "A group far below the others is where the reward model is weak: add or clean its data.",
     ("rm",), "group_by is set, or several data files are mixed"),
    ("eval/margin_mean/<group>", "RM: eval/margin_mean over the held-out pairs of one group.", "reward",
     "Compare groups: a small margin means the model barely separates that kind of response.", ("rm",), "group_by is set, or several data files are mixed"),
    ("eval/loss/<group>", "RM: eval/loss over the held-out prompts of one group.", "nats",
     "Rising for one group while the others fall: that group is being overfit or drowned out.", ("rm",), "group_by is set, or several data files are mixed"),
    ("eval/count/<group>", "RM: number of held-out prompts in one group.", "count",
     "Small counts make that group's accuracy noisy; read it with its count.", ("rm",), "group_by is set, or several data files are mixed"),
    ("eval/margin_mean",
     "RM: mean of r_chosen - r_rejected over held-out pairs.",
     "reward", "Positive and growing; a margin that explodes while accuracy stalls is over-confidence.",
     ("rm",)),
    ("eval/score_mean",
     "RM: mean score over all held-out responses (chosen and rejected); saved with the model so RL can "
     "normalize rewards.",
     "reward", "Any level is fine: RL subtracts it.", ("rm",)),
    ("eval/score_std",
     "RM: standard deviation of the scores over all held-out responses; saved with the model.",
     "reward", "Near 0 means the reward model cannot tell responses apart.", ("rm",)),
    # -- direct preference optimization (rlhfkit dpo) --------------------------------------
    ("train/reward_accuracy",
     "DPO: fraction of pairs in the training batch whose implicit reward r_chosen > r_rejected (ties count as wrong).",
     "fraction", "Starts at 0 (policy = reference) and rises; on held-out pairs it is the number to compare "
     "with a reward model's eval/accuracy.", ("dpo",)),
    ("train/chosen_reward",
     "DPO: mean implicit reward beta * (log pi - log pi_ref) of the chosen responses in the training batch "
     "(SimPO: beta * mean token log pi).",
     "nats", "Ideally rises; it usually falls a little, more slowly than the rejected one.", ("dpo",)),
    ("train/rejected_reward",
     "DPO: mean implicit reward of the rejected responses in the training batch.",
     "nats", "Falls as training pushes rejected responses down.", ("dpo",)),
    ("train/reward_margin",
     "DPO: mean of r_chosen - r_rejected over the training batch.",
     "nats", "Rises; a margin that keeps growing on train but not on eval is overfitting.", ("dpo",)),
    ("train/chosen_logps",
     "DPO: mean summed log-probability of the chosen responses under the policy, over the training batch.",
     "nats", "Falling while the margin grows is the known DPO failure: both responses lose probability "
     "and mass moves to text in neither (docs/dpo.md).", ("dpo",)),
    ("train/rejected_logps",
     "DPO: mean summed log-probability of the rejected responses under the policy, over the training batch.",
     "nats", "Falls; compare with chosen_logps.", ("dpo",)),
    ("eval/reward_accuracy",
     "DPO: fraction of pairs in the held-out pairs whose implicit reward r_chosen > r_rejected (ties count as wrong).",
     "fraction", "Starts at 0 (policy = reference) and rises; on held-out pairs it is the number to compare "
     "with a reward model's eval/accuracy.", ("dpo",)),
    ("eval/chosen_reward",
     "DPO: mean implicit reward beta * (log pi - log pi_ref) of the chosen responses in the held-out pairs "
     "(SimPO: beta * mean token log pi).",
     "nats", "Ideally rises; it usually falls a little, more slowly than the rejected one.", ("dpo",)),
    ("eval/rejected_reward",
     "DPO: mean implicit reward of the rejected responses in the held-out pairs.",
     "nats", "Falls as training pushes rejected responses down.", ("dpo",)),
    ("eval/reward_margin",
     "DPO: mean of r_chosen - r_rejected over the held-out pairs.",
     "nats", "Rises; a margin that keeps growing on train but not on eval is overfitting.", ("dpo",)),
    ("eval/chosen_logps",
     "DPO: mean summed log-probability of the chosen responses under the policy, over the held-out pairs.",
     "nats", "Falling while the margin grows is the known DPO failure: both responses lose probability "
     "and mass moves to text in neither (docs/dpo.md).", ("dpo",)),
    ("eval/rejected_logps",
     "DPO: mean summed log-probability of the rejected responses under the policy, over the held-out pairs.",
     "nats", "Falls; compare with chosen_logps.", ("dpo",)),
    ("eval/kl_to_ref",
     "DPO: KL to the reference on held-out prompts, mean over one sampled response per prompt of "
     "sum_t (log pi - log pi_ref) (k1); absent for SimPO (no reference).",
     "nats", "Grows as the policy leaves the reference; DPO has no explicit leash besides beta, so "
     "compare it with an RL run's kl/mean before comparing rewards.", ("dpo",)),
    # -- data loading --------------------------------------------------------------------------
    # (RL reports its prompt counts in the message of the `start` event instead.)
    ("data/truncated",
     "Number of training examples cut to the maximum length when the data was loaded.",
     "count", "Large counts mean max length is too small for the data; truncated responses lose their end.",
     ("sft", "rm"), _RETURNED),
    ("data/kept",
     "Number of training examples kept when the data was loaded.",
     "count", "Check it is the size of the data you meant to train on.", ("sft", "rm"), _RETURNED),
    ("data/dropped",
     "Number of training examples skipped when the data was loaded (e.g. empty response, prompt longer "
     "than the maximum length).",
     "count", "Should be 0 or tiny; otherwise fix the data or the length limits.", ("sft", "rm"), _RETURNED),
)

# Events: `{"step", "event": name, "message", ...}` records in the same metrics.jsonl, emitted by
# the RL trainer (the SFT and RM trainers emit none). Names in INFO_EVENTS record what happened
# (not a warning): the logger echoes them at INFO level, the report lists them apart and the plots
# do not mark them. EVENT_WHEN says when each event other than `start` is emitted.
EVENTS: dict[str, str] = {
    "start": "The run started (or resumed) at this step; the message says what it runs on (algorithm, "
             "prompts, ranks, CPU threads).",
    "nonfinite": "A loss or gradient was NaN or infinite and the run stops (on_nonfinite stop); the "
                 "message names the step and the quantity. With on_nonfinite skip no event is written: "
                 "the minibatch is skipped and counted in train/skipped_minibatches.",
    "groups_all_dropped": "Every prompt group had equal scores, so the step had no learning signal.",
    # Run-health detectors (rlhfkit/reporting/health/, docs/health/).
    "entropy_collapse": "policy/entropy fell below the warning threshold: the policy has stopped exploring.",
    "clipfrac_high": "policy/clipfrac exceeded the warning threshold: updates are too large.",
    "kl_runaway": "kl/mean above its limit or growing fast: the policy drifts away from the reference.",
    "overoptimization": "On the held-out probe the score kept rising while the gold reward fell (or, without "
                        "gold, past a KL budget while the answers drifted): the best probe's policy is OUTPUT/best.",
    "reward_hacking": "The score rose while the gold reward fell (or, without gold, while responses grew "
                      "longer or the policy's entropy fell): the policy exploits the reward.",
    "value_instability": "loss/value jumped or oscillated, or value/explained_variance stayed strongly "
                         "negative: the critic cannot track the returns.",
    "stalled": "Score flat and the policy where it started (KL to the reference, or policy/approx_kl without one) "
               "over a long window: training is not moving.",
    "rollback": "A health detector with policy rollback fired: the run restored an earlier checkpoint "
                "and continues from it.",
    "reward_service_failed": "A reward service or judge failed after its retries (--reward-on-error stop): the "
                             "run saved a checkpoint of the last completed step and stopped; --resume continues.",
    "stopped": "A health detector with policy stop fired (or a rollback found no checkpoint to return "
               "to): the run saved a checkpoint at this step and ended.",
}
INFO_EVENTS = frozenset({"start"})
_DETECTOR = "the health detector fires (docs/health/); every RL run has the detectors on, with policy warn by default"
EVENT_WHEN: dict[str, str] = {
    "nonfinite": "a loss or gradient is NaN or infinite and on_nonfinite is stop",
    "groups_all_dropped": "drop_uniform_groups is true and every group's scores are equal",
    **{name: _DETECTOR for name in ("entropy_collapse", "clipfrac_high", "kl_runaway", "reward_hacking",
                                    "value_instability", "stalled", "overoptimization")},
    "rollback": "a detector whose policy is rollback fires",
    "reward_service_failed": "a reward service or judge fails after its retries with reward_on_error stop",
    "stopped": "a detector whose policy is stop (or rollback, with no checkpoint to return to) fires",
}

# Per-policy numbers in summary.json["eval"][policy] (written by the quickstart / `rlhfkit eval`).
# name -> (definition, unit, higher_is_better: True / False / None when neither is better).
SUMMARY_FIELDS: dict[str, tuple[str, str, bool | None]] = {
    "gold_mean": ("Mean gold (true) reward of the policy's responses on held-out prompts.", "reward", True),
    "accuracy": ("Fraction of held-out questions answered exactly right.", "fraction", True),
    "score_mean": ("Mean score from the reward model (or reward function) on held-out prompts.", "reward", True),
    "kl_to_ref": ("KL to the reference model summed over response tokens, mean per response.", "nats", None),
    "ppl": ("Perplexity of the policy's responses under the reference model.", "1", None),
    "length_mean": ("Mean response length.", "tokens", None),
}


def describe(name: str) -> str:
    """One readable line for a metric, event or summary field: definition, unit and what to watch."""
    if definition_key(name) in METRICS:
        m = METRICS[definition_key(name)]
        return f"{m.name} [{m.unit}]: {m.definition} Watch: {m.watch}"
    if name in EVENTS:
        return f"event {name}: {EVENTS[name]}"
    if name in SUMMARY_FIELDS:
        definition, unit, _ = SUMMARY_FIELDS[name]
        return f"{name} [{unit}]: {definition}"
    raise KeyError(_unknown_message(name))


# Metrics logged once per group: "eval/accuracy/helpful" is defined by "eval/accuracy/<group>".
GROUPED_PREFIXES = ("eval/accuracy/", "eval/margin_mean/", "eval/loss/", "eval/count/")


def definition_key(name: str) -> str:
    """The METRICS key that defines `name`: itself, or "<prefix><group>" for a per-group metric."""
    if name in METRICS:
        return name
    for prefix in GROUPED_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return prefix + "<group>"
    return name


def undefined_metrics(names) -> list[str]:
    """Names (in first-seen order, no repeats) that are not keys of METRICS.

    Pass the keys of metric rows, not event records (their "event"/"message" keys are not metrics).
    """
    out: list[str] = []
    for name in names:
        if definition_key(name) not in METRICS and name not in out:
            out.append(name)
    return out


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, list(METRICS), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (f"unknown metric {name!r}.{hint} Every logged name must be defined in "
            f"rlhfkit/reporting/metrics.py (METRICS) and docs/metrics.md.")


def metrics_markdown() -> str:
    """The tables of docs/metrics.md (metrics, events, summary fields) as Markdown."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| name | unit | stages | logged | definition | what to watch |", "|---|---|---|---|---|---|"]
    for m in METRICS.values():
        lines.append(f"| `{m.name}` | {m.unit} | {', '.join(m.stages)} | {cell(m.when or 'always')} | "
                     f"{cell(m.definition)} | {cell(m.watch)} |")
    lines += ["", "| event | emitted | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {cell(EVENT_WHEN.get(name, 'always'))} | {cell(text)} |" for name, text in EVENTS.items()]
    lines += ["", "| summary field | unit | higher is better | definition |", "|---|---|---|---|"]
    for name, (definition, unit, better) in SUMMARY_FIELDS.items():
        better_text = {True: "yes", False: "no", None: "neither"}[better]
        lines.append(f"| `{name}` | {unit} | {better_text} | {cell(definition)} |")
    return "\n".join(lines) + "\n"
