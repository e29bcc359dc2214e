"""`rlhfkit eval`: how good is a policy, how far did it move, and does it beat another one?

Per policy: mean score (reward model or function), the optional gold/verifier mean, KL to a
reference model and perplexity under it (of the policy's own samples), and length statistics.
With a second policy: a win rate judged by the reward model, or by a judge LM that sees each
pair in both orders (position bias cancels; disagreeing orders count as ties).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.config import ConfigError, option, save_config


@dataclass
class EvalConfig:
    """`rlhfkit eval`: evaluate one policy, or compare two, on held-out prompts."""

    policy: str = option(help="policy folder (or hub name) to evaluate")
    prompts: str = option(help="held-out prompts (same formats as `rlhfkit rl --prompts`)")
    output: str = option(help="folder for eval.json")
    compare: str | None = option(None, "a second policy: adds its metrics and the win rate of `policy` against it")
    reward_model: str | None = option(None, "reward model folder used for scores (and the win rate)")
    reward_fn: str | None = option(None, "reward function file.py:fn / module:fn / exact_match, instead of a model")
    gold_fn: str | None = option(None, "optional true reward / verifier, reported as gold_mean")
    reference: str | None = option(None, "reference model for KL and perplexity (usually the SFT policy)")
    judge: str | None = option(None, "win-rate judge: 'reward' (default when a reward is given) or a causal-LM folder")
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
    seed: int = option(0, "random seed for sampling")
    trust_remote_code: bool = option(False, "allow model code from the hub (only for models you trust)")

    def __post_init__(self):
        if self.reward_model and self.reward_fn:
            raise ConfigError("give at most one of --reward-model and --reward-fn")
        if self.num_prompts < 1 or self.batch_size < 1:
            raise ConfigError("num_prompts and batch_size must be >= 1")


def _scorer(cfg: EvalConfig, tokenizer, device):
    from rlhfkit.models import load_reward_model
    from rlhfkit.rollout import FunctionScorer, RewardModelScorer, load_reward_function

    if cfg.reward_model:
        return RewardModelScorer(load_reward_model(cfg.reward_model, dtype=cfg.dtype, device=device), tokenizer)
    if cfg.reward_fn:
        return FunctionScorer(load_reward_function(cfg.reward_fn))
    return None


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


@torch.no_grad()
def judge_pairs(judge, tokenizer, prompts: list[str], first: list[str], second: list[str]) -> list[float]:
    """A judge LM's verdicts, each pair shown in both orders: 1 (first wins), 0 (second), 0.5 (tie).

    The judge reads "Which response is better, A or B?" and we compare the logprobs of " A" and " B"
    as the next token. Only a verdict that survives swapping the order counts as a win.
    """
    from rlhfkit.models import position_ids_from_mask

    def prefers_a(p, ra, rb):
        text = (f"Question: {p}\nResponse A: {ra}\nResponse B: {rb}\nWhich response is better, A or B? Answer:")
        enc = tokenizer([text], return_tensors="pt").to(next(judge.parameters()).device)
        logits = judge(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       position_ids=position_ids_from_mask(enc["attention_mask"])).logits[0, -1]
        ids = [tokenizer(" A", add_special_tokens=False)["input_ids"][-1],
               tokenizer(" B", add_special_tokens=False)["input_ids"][-1]]
        return bool(logits[ids[0]] > logits[ids[1]])

    verdicts = []
    for p, x, y in zip(prompts, first, second):
        ab, ba = prefers_a(p, x, y), prefers_a(p, y, x)
        verdicts.append(1.0 if ab and not ba else 0.0 if ba and not ab else 0.5)
    return verdicts


def run_eval(cfg: EvalConfig) -> dict:
    """Evaluate `policy` (and `compare`), write OUTPUT/eval.json, print a short table."""
    from rlhfkit.data import load_prompts, tokenize_prompts
    from rlhfkit.models import load_causal_lm, load_reference, load_tokenizer
    from rlhfkit.rollout import FunctionScorer, GenerationSettings, load_reward_function
    from rlhfkit.trainers.common import resolve_device, set_seed

    out_dir = Path(cfg.output)
    save_config(cfg, out_dir, name="eval_config.yaml")
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.policy, trust_remote_code=cfg.trust_remote_code)
    rows, _ = tokenize_prompts(load_prompts(cfg.prompts, prompt_field=cfg.prompt_field)[:cfg.num_prompts], tokenizer,
                               cfg.max_prompt_length, overlong="truncate")
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, n=1)
    scorer = _scorer(cfg, tokenizer, device)
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
    if cfg.compare:
        a, b = result["policy"], result["compare"]
        if cfg.judge and cfg.judge != "reward":
            judge = load_reference(cfg.judge, dtype=cfg.dtype, device=device)
            verdicts = judge_pairs(judge, load_tokenizer(cfg.judge), [r["prompt_text"] for r in rows],
                                   a["_responses"], b["_responses"])
            result["win_rate"] = win_rate(verdicts, [0.5] * len(verdicts)) | {"judge": cfg.judge}
        elif a["_scores"]:
            result["win_rate"] = win_rate(a["_scores"], b["_scores"]) | {"judge": "reward"}
    for name in names:
        for key in ("_responses", "_scores"):
            result[name].pop(key, None)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(result, indent=2))
    print(format_table({k: result[k] for k in names}))
    if "win_rate" in result:
        print(f"win rate of policy vs compare: {result['win_rate']['win_rate']:.3f}")
    return result


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

