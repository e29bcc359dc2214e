"""`rlhfkit eval`: how good is a policy, how far did it move, and does it beat another one?

Per policy: mean score (reward model or function), the optional gold/verifier mean, KL to a
reference model and perplexity under it (of the policy's own samples), and length statistics.
With a second policy: a win rate judged by the reward model, or by a judge (a local
instruction-tuned model or an OpenAI-compatible endpoint, `rlhfkit/judging.py`) that sees each
pair in both orders, with a Wilson 95% interval, the tie rate and the position-consistency rate;
and a blind sheet for people (`--export-review`) whose filled copy gives a win rate too
(`--import-review`, `rlhfkit/review.py`). See docs/evaluation.md.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.config import ConfigError, option, save_config
from rlhfkit.rollout.options import RemoteRewardOptions


@dataclass(kw_only=True)
class EvalConfig(RemoteRewardOptions):
    """`rlhfkit eval`: evaluate one policy, or compare two, on held-out prompts."""

    policy: str | None = option(None, "policy folder (or hub name) to evaluate (required unless --import-review)")
    prompts: str | None = option(None, "held-out prompts (same formats as `rlhfkit rl --prompts`; required unless "
                                       "--import-review)")
    output: str = option(help="folder for eval.json and report.html")
    compare: str | None = option(None, "a second policy: adds its metrics and the win rate of `policy` against it")
    reward_model: str | None = option(None, "reward model folder used for scores (and the win rate)")
    reward_fn: str | None = option(None, "reward function file.py:fn / module:fn / exact_match, instead of a model")
    gold_fn: str | None = option(None, "optional true reward / verifier, reported as gold_mean")
    reference: str | None = option(None, "reference model for KL and perplexity (usually the SFT policy)")
    judge: str | None = option(None, "win-rate judge: 'reward' (default when a reward is given) or a local "
                                     "instruction-tuned model folder (prompt through its chat template)")
    judge_url: str | None = option(None, "OpenAI-compatible API base of a judge, e.g. http://host:8000/v1 "
                                         "(POST /chat/completions)")
    judge_model: str | None = option(None, "model name sent to --judge-url")
    judge_api_key_env: str | None = option(None, "name of the environment variable holding the judge's API key "
                                                 "(the key itself is never logged or saved)")
    judge_template: str = option("helpfulness", "judge prompt: a built-in rubric (helpfulness, harmlessness) or a "
                                                "file with {prompt}, {response_a}, {response_b}")
    judge_timeout: float = option(60.0, "seconds to wait for one judge answer")
    judge_retries: int = option(3, "retries of a judge request after a timeout, connection error, 429 or 5xx")
    judge_backoff: float = option(1.0, "seconds before the first retry; doubled for each further retry")
    judge_concurrency: int = option(4, "judge requests in flight at once")
    judge_max_tokens: int = option(256, "longest judge answer in tokens (it must end with 'Verdict: A|B|tie')")
    export_review: str | None = option(None, "write a blind side-by-side sheet for people (CSV) of policy vs compare")
    import_review: str | None = option(None, "a filled review sheet: its win rate goes into eval.json and the report "
                                             "(no generation)")
    review_key: str | None = option(None, "the review's hidden key (JSON); default: the sheet's name + .key.json",
                                    aliases=("--key",))
    prompt_field: str | None = option(None, "prompt field name when not `prompt` / `messages`")
    num_prompts: int = option(64, "evaluate on the first N prompts")
    max_prompt_length: int = option(256, "prompts longer than this are truncated from the left")
    max_new_tokens: int = option(64, "response length limit")
    temperature: float = option(1.0, "sampling temperature (1.0 makes KL and perplexity the model's own)")
    top_p: float = option(1.0, "nucleus sampling")
    batch_size: int = option(32, "prompts per generation batch")
    num_samples_shown: int = option(5, "sample responses kept in eval.json")
    dtype: str = option("float32", "weights dtype", choices=("float32", "bfloat16", "float16", "auto"))
    device: str = option("auto", "cpu, cuda, ... or auto")
    seed: int = option(0, "random seed for sampling (and the review sheet's order)")
    trust_remote_code: bool = option(False, "allow model code from the hub (only for models you trust)")

    def __post_init__(self):
        if self.reward_model and self.reward_fn:
            raise ConfigError("give at most one of --reward-model and --reward-fn")
        if self.num_prompts < 1 or self.batch_size < 1:
            raise ConfigError("num_prompts and batch_size must be >= 1")
        self.check_remote_rewards()
        if not self.import_review and not (self.policy and self.prompts):
            raise ConfigError("give --policy and --prompts (or --import-review with --key to score a filled sheet)")
        if self.export_review and not self.compare:
            raise ConfigError("--export-review needs --compare: the sheet shows policy and compare side by side")
        if self.judge_url and not self.judge_model:
            raise ConfigError("--judge-url needs --judge-model (the model name the endpoint serves)")
        if self.judge_url and self.judge not in (None, "reward"):
            raise ConfigError("give one judge: --judge MODEL_FOLDER (local) or --judge-url (endpoint), not both")
        if (self.judge_url or self.judge not in (None, "reward")) and not self.compare and not self.import_review:
            raise ConfigError("a judge compares two policies: add --compare")
        if self.judge_timeout <= 0 or self.judge_retries < 0 or self.judge_backoff < 0 or self.judge_concurrency < 1:
            raise ConfigError("judge_timeout must be > 0, judge_retries and judge_backoff >= 0, judge_concurrency >= 1")

    def key_path(self) -> str:
        """The review key: --key, else next to the sheet (review.csv -> review.key.json)."""
        sheet = self.export_review or self.import_review
        return self.review_key or str(Path(sheet).with_suffix(".key.json"))


def _scorer(cfg: EvalConfig, tokenizer, device):
    from rlhfkit.rollout import FunctionScorer, load_reward_function, load_reward_scorer
    from rlhfkit.rollout.sources import with_remote_rewards

    local = None
    if cfg.reward_model:  # with its own tokenizer when it is of another family
        local = load_reward_scorer(cfg.reward_model, tokenizer, dtype=cfg.dtype, device=device)
    elif cfg.reward_fn:
        local = FunctionScorer(load_reward_function(cfg.reward_fn))
    return with_remote_rewards(cfg, local)  # + --reward-url services and a --reward-judge-url judge (None: no reward)


@torch.no_grad()
def evaluate_policy(policy, tokenizer, rows: list, settings, scorer=None, gold=None, reference=None,
                    batch_size: int = 32, num_samples_shown: int = 5) -> dict:
    """Sample one response per prompt and measure it. Returns metrics plus `_responses` (texts).

    kl_to_ref: mean over responses of sum_t (log pi(y_t) - log pi_ref(y_t)) (k1; unbiased);
    ppl: exp of the mean negative reference log-likelihood per response token.
    """
    from rlhfkit.data import prompt_fields
    from rlhfkit.rollout import make_experience

    scores, golds, kls, ref_nll, ref_tokens, lengths, responses, samples = [], [], [], 0.0, 0.0, [], [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        exp = make_experience(policy, tokenizer, [r["prompt_text"] for r in chunk], settings, reference=reference,
                              scorer=scorer, fields=prompt_fields(chunk), prompt_ids=[r["prompt_ids"] for r in chunk])
        mask = exp.response_mask
        lengths += mask.sum(-1).tolist()
        responses += list(exp.responses)
        if scorer is not None:
            scores += exp.scores.float().tolist()
        if gold is not None:
            golds += gold(exp).float().tolist()
        if exp.ref_logprobs is not None:
            kls += ((exp.logprobs - exp.ref_logprobs) * mask).sum(-1).tolist()
            ref_nll += float(-(exp.ref_logprobs * mask).sum())
            ref_tokens += float(mask.sum())
        for i in range(min(len(chunk), num_samples_shown - len(samples))):
            samples.append({"prompt": exp.prompts[i], "response": exp.responses[i],
                            "score": scores[start + i] if scores else None,
                            "gold": golds[start + i] if golds else None})
    out = {"n": len(responses), "length_mean": _mean(lengths),
           "length_std": float(torch.tensor(lengths).float().std()) if len(lengths) > 1 else 0.0}
    if scores:
        out["score_mean"] = _mean(scores)
    if golds:
        out["gold_mean"] = _mean(golds)
    if kls:
        out["kl_to_ref"] = _mean(kls)
        out["ppl"] = math.exp(min(ref_nll / max(ref_tokens, 1.0), 50.0))
    out["samples"] = samples
    out["_responses"] = responses
    out["_scores"] = scores
    return out


def win_rate(a: list[float], b: list[float]) -> dict:
    """Wins, ties and losses of scores `a` against `b` (pairwise, same prompts); ties count half."""
    if len(a) != len(b) or not a:
        raise ValueError("win_rate needs two equally long, non-empty score lists")
    wins = sum(x > y for x, y in zip(a, b))
    ties = sum(x == y for x, y in zip(a, b))
    return {"win_rate": (wins + 0.5 * ties) / len(a), "wins": wins, "ties": ties, "losses": len(a) - wins - ties}


def judge_pairs(judge, tokenizer, prompts: list[str], first: list[str], second: list[str],
                template: str = "helpfulness") -> list[float]:
    """A local judge LM's verdicts, each pair shown in both orders: 1 (first wins), 0 (second), 0.5 (tie)."""
    from rlhfkit.judging import LocalJudge, judge_both_orders, load_template

    out = judge_both_orders(LocalJudge(judge, tokenizer), load_template(template), prompts, first, second)
    return [{"win": 1.0, "loss": 0.0, "tie": 0.5}[v["outcome"]] for v in out["verdicts"]]


def make_judge(cfg: EvalConfig, device):
    """The configured judge: an HTTPJudge for --judge-url, else a LocalJudge for --judge MODEL_FOLDER."""
    from rlhfkit.judging import HTTPJudge, LocalJudge

    if cfg.judge_url:
        key = None
        if cfg.judge_api_key_env:
            key = os.environ.get(cfg.judge_api_key_env)
            if not key:
                raise ConfigError(f"--judge-api-key-env {cfg.judge_api_key_env}: that environment variable is not "
                                  f"set (export it with the judge's API key)")
        return HTTPJudge(cfg.judge_url, cfg.judge_model, api_key=key, timeout=cfg.judge_timeout,
                         retries=cfg.judge_retries, backoff=cfg.judge_backoff, concurrency=cfg.judge_concurrency,
                         max_tokens=cfg.judge_max_tokens)
    from rlhfkit.models import load_causal_lm, load_tokenizer

    model = load_causal_lm(cfg.judge, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code).eval()
    return LocalJudge(model, load_tokenizer(cfg.judge, trust_remote_code=cfg.trust_remote_code))


def prompt_as_text(prompt) -> str:
    """A prompt for a judge or a reviewer: the string, or a chat as 'role: content' lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate `policy` (and `compare`), write OUTPUT/eval.json and OUTPUT/report.html, print a short table.

    With --import-review only: add the filled sheet's win rate to OUTPUT/eval.json (kept from an
    earlier run in the same folder) and rebuild the report; nothing is generated.
    """
    out_dir = Path(cfg.output)
    save_config(cfg, out_dir, name="eval_config.yaml")
    if cfg.import_review:
        return _import_review(cfg, out_dir)
    result, rows = _evaluate_policies(cfg)
    names = [n for n in ("policy", "compare") if n in result]
    if cfg.compare:
        a, b = result["policy"], result["compare"]
        prompts = [prompt_as_text(r["prompt"]) for r in rows]
        if cfg.judge_url or (cfg.judge and cfg.judge != "reward"):
            from rlhfkit.judging import judge_both_orders, load_template
            from rlhfkit.trainers.common import resolve_device

            judge = make_judge(cfg, resolve_device(cfg.device))
            out = judge_both_orders(judge, load_template(cfg.judge_template), prompts, a["_responses"],
                                    b["_responses"])
            result["win_rate"] = out | {"judge": cfg.judge_url and f"{cfg.judge_url} ({cfg.judge_model})" or cfg.judge,
                                        "template": cfg.judge_template}
        elif a["_scores"]:
            from rlhfkit.winrate import win_summary

            counts = win_rate(a["_scores"], b["_scores"])
            result["win_rate"] = win_summary(counts["wins"], counts["ties"], counts["losses"]) | {"judge": "reward"}
        if cfg.export_review:
            from rlhfkit.review import export_review

            export_review(cfg.export_review, cfg.key_path(), prompts, a["_responses"], b["_responses"], seed=cfg.seed,
                          names={"policy": cfg.policy, "compare": cfg.compare})
            result["review_sheet"] = {"sheet": cfg.export_review, "key": cfg.key_path()}
    for name in names:
        for key in ("_responses", "_scores"):
            result[name].pop(key, None)
    _write(out_dir, result)
    print(format_table({k: result[k] for k in names}))
    if "win_rate" in result:
        w = result["win_rate"]
        print(f"win rate of policy vs compare: {w['win_rate']:.3f} (95% CI {w['ci_low']:.3f}-{w['ci_high']:.3f}, "
              f"ties {w['ties']}" + (f", position consistency {w['position_consistency']:.3f}"
                                     if "position_consistency" in w else "") + f"; judge: {w['judge']})")
    if cfg.export_review:
        print(f"review sheet: {cfg.export_review} (key, keep it from reviewers: {cfg.key_path()})")
    return result


def _evaluate_policies(cfg: EvalConfig) -> tuple[dict, list]:
    """Generate and measure each policy on the prompts: ({"prompts", "policy", "compare"?}, prompt rows)."""
    from rlhfkit.data import load_prompts, tokenize_prompts
    from rlhfkit.models import load_causal_lm, load_reference, load_tokenizer
    from rlhfkit.rollout import FunctionScorer, GenerationSettings, load_reward_function
    from rlhfkit.trainers.common import resolve_device, set_seed

    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.policy, trust_remote_code=cfg.trust_remote_code)
    rows, _ = tokenize_prompts(load_prompts(cfg.prompts, prompt_field=cfg.prompt_field)[:cfg.num_prompts], tokenizer,
                               cfg.max_prompt_length, overlong="truncate")
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, n=1)
    scorer = _scorer(cfg, tokenizer, device)
    getattr(scorer, "add_prompts", lambda rows: None)(rows)
    gold = FunctionScorer(load_reward_function(cfg.gold_fn)) if cfg.gold_fn else None
    reference = load_reference(cfg.reference, dtype=cfg.dtype, device=device) if cfg.reference else None
    result: dict = {"prompts": cfg.prompts}
    names = {"policy": cfg.policy, **({"compare": cfg.compare} if cfg.compare else {})}
    for name, path in names.items():
        set_seed(cfg.seed)
        model = load_causal_lm(path, dtype=cfg.dtype, device=device, trust_remote_code=cfg.trust_remote_code).eval()
        result[name] = evaluate_policy(model, tokenizer, rows, settings, scorer, gold, reference, cfg.batch_size,
                                       cfg.num_samples_shown)
        result[name]["path"] = path
        del model
    return result, rows


def _import_review(cfg: EvalConfig, out_dir: Path) -> dict:
    from rlhfkit.review import import_review

    path = out_dir / "eval.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result["human_review"] = import_review(cfg.import_review, cfg.key_path())
    _write(out_dir, result)
    h = result["human_review"]
    print(f"human review of {cfg.import_review}: win rate {h['win_rate']:.3f} (95% CI {h['ci_low']:.3f}-"
          f"{h['ci_high']:.3f}; {h['wins']} wins, {h['ties']} ties, {h['losses']} losses, {h['unfilled']} unfilled)")
    return result


def _write(out_dir: Path, result: dict) -> None:
    from rlhfkit.reporting.eval_report import write_eval_report

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2))
    write_eval_report(result, out_dir / "report.html")


def format_table(per_policy: dict) -> str:
    """A small fixed-width table of the headline numbers, one row per policy."""
    cols = ["gold_mean", "score_mean", "kl_to_ref", "ppl", "length_mean"]
    shown = [c for c in cols if any(c in m for m in per_policy.values())]
    lines = ["policy".ljust(10) + "".join(c.rjust(13) for c in shown)]
    for name, m in per_policy.items():
        lines.append(name.ljust(10) + "".join(
            (f"{m[c]:13.3f}" if isinstance(m.get(c), (int, float)) else "-".rjust(13)) for c in shown))
    return "\n".join(lines)


def _mean(xs) -> float:
    return float(sum(xs) / len(xs)) if len(xs) else float("nan")

