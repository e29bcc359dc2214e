"""`rlhfkit doctor`: check a model, its data and its reward before spending a GPU-day on `rlhfkit rl`.

Loads what `rl` would (policy, tokenizer, reward model or function, prompts, critic base), samples
a few rollouts and reports: how prompts are rendered and tokenized, special-token hazards, EOS
and truncation rates, the reward's scale / spread / NaNs, the share of GRPO groups with no signal,
how a reward model of another tokenizer is handled, and a rough memory / time estimate of a step.

Each finding has a level: "info" (handled, worth knowing), "warning" (likely to hurt the run) or
"blocking" (the run would fail or be meaningless). Exit status: 2 with a blocking finding, 1 with
a warning under --strict, else 0.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import torch

from rlhfkit.config import ConfigError, option

LEVELS = ("info", "warning", "blocking")


@dataclass
class DoctorConfig:
    """`rlhfkit doctor`: load what `rl` would, sample a few rollouts, report hazards."""

    policy: str = option(help="policy folder (or hub name), as for `rlhfkit rl`")
    prompts: str = option(help="prompt data, as for `rlhfkit rl --prompts`")
    reward_model: str | None = option(None, "reward model folder (any family: it is read with its own tokenizer)")
    reward_fn: str | None = option(None, "reward function file.py:fn / module:fn / exact_match, instead of a model")
    critic: str | None = option(None, "critic initialisation folder (default as in `rl`: the reward model, else "
                                      "the policy)")
    algo: str = option("grpo", "the algorithm you will run: decides the critic and the group size")
    n: int | None = option(None, "responses per prompt (default: the algorithm's); YAML key `n`",
                           flag="--samples-per-prompt", aliases=("--num-samples",))
    prompt_field: str | None = option(None, "prompt field name when not `prompt` / `messages`")
    num_prompts: int = option(4, "prompts sampled for the check")
    prompts_per_step: int = option(8, "prompts per RL step, for the memory / time estimate")
    max_prompt_length: int = option(256, "prompts longer than this are truncated from the left")
    max_new_tokens: int = option(64, "response length limit")
    temperature: float = option(1.0, "sampling temperature")
    dtype: str = option("float32", "weights dtype", choices=("float32", "bfloat16", "float16", "auto"))
    device: str = option("auto", "cpu, cuda, ... or auto")
    seed: int = option(0, "random seed for sampling")
    trust_remote_code: bool = option(False, "allow model code from the hub (only for models you trust)")
    strict: bool = option(False, "exit 1 when there is any warning")
    json: bool = option(False, "print the report as JSON instead of text")

    def __post_init__(self):
        if bool(self.reward_model) == bool(self.reward_fn):
            raise ConfigError("give exactly one of --reward-model and --reward-fn")
        if self.num_prompts < 1 or self.prompts_per_step < 1 or self.max_new_tokens < 1:
            raise ConfigError("num_prompts, prompts_per_step and max_new_tokens must be >= 1")


class Report:
    """Findings and sections of the doctor's report."""

    def __init__(self):
        self.findings: list[dict] = []
        self.sections: dict[str, dict] = {}

    def add(self, level: str, code: str, message: str) -> None:
        assert level in LEVELS, level
        self.findings.append({"level": level, "code": code, "message": message})

    def codes(self, level: str | None = None) -> set[str]:
        return {f["code"] for f in self.findings if level is None or f["level"] == level}

    def exit_code(self, strict: bool) -> int:
        if self.codes("blocking"):
            return 2
        return 1 if strict and self.codes("warning") else 0

    def as_dict(self, strict: bool) -> dict:
        return {"exit_code": self.exit_code(strict), "findings": self.findings, **self.sections}

    def as_text(self, strict: bool) -> str:
        lines = []
        for name, section in self.sections.items():
            lines.append(f"== {name}")
            for key, value in section.items():
                if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                    lines.append(f"  {key}:")  # examples: one item per block, one field per line
                    for item in value:
                        lines += [f"    {'-' if i == 0 else ' '} {k}: {json.dumps(v, ensure_ascii=False)}"
                                  for i, (k, v) in enumerate(item.items())]
                    continue
                text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
                lines.append(f"  {key}: {text}")
        lines.append("== findings")
        order = sorted(self.findings, key=lambda f: -LEVELS.index(f["level"]))
        lines += [f"  [{f['level']}] {f['code']}: {f['message']}" for f in order] or ["  none"]
        lines.append(f"== exit status {self.exit_code(strict)}")
        return "\n".join(lines)


# ---------------------------------------------------------------- checks (each adds to the report)

def check_tokenizer(report: Report, tokenizer, raw_pad: str | None, model) -> None:
    from rlhfkit.data.chat import end_of_turn_id, has_chat_template
    from rlhfkit.models.loading import check_vocab_fits
    from rlhfkit.rollout.generation import eos_token_ids

    eos_ids = eos_token_ids(model, tokenizer)
    bos_first = tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    report.sections["tokenizer"] = {
        "special_tokens": {r: [getattr(tokenizer, f"{r}_token"), getattr(tokenizer, f"{r}_token_id")]
                           for r in ("bos", "eos", "pad", "unk")},
        "eos_ids_that_stop_generation": {i: tokenizer.convert_ids_to_tokens(i) for i in eos_ids},
        "prepends_bos": bos_first, "chat_template": has_chat_template(tokenizer), "vocabulary": len(tokenizer)}
    try:
        check_vocab_fits(model, tokenizer, "the policy")
    except ConfigError as err:
        report.add("blocking", "tokenizer_larger_than_model", str(err))
    if raw_pad is None:
        report.add("info", "no_pad_token", f"the tokenizer has no pad token; {tokenizer.pad_token!r} is reused as pad "
                   "(safe here: every mask is explicit)")
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id in eos_ids:
        report.add("info", "pad_is_eos", "pad == an EOS id: sequence ends come from masks, never from the pad id, so "
                   "the real EOS stays in the response mask (tools that mask by pad id drop it)")
    if len(eos_ids) > 1:
        report.add("info", "several_eos_ids", f"generation stops at any of {len(eos_ids)} EOS ids: "
                   f"{[tokenizer.convert_ids_to_tokens(i) for i in eos_ids]}")
    turn_end = end_of_turn_id(tokenizer)
    config_eos = getattr(model.generation_config, "eos_token_id", None)
    config_eos = set(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    if turn_end is not None and turn_end not in config_eos | {tokenizer.eos_token_id}:
        report.add("warning", "end_of_turn_not_eos", f"the chat template ends a reply with "
                   f"{tokenizer.convert_ids_to_tokens(turn_end)!r}, which neither the tokenizer nor "
                   "generation_config.json lists as EOS: rlhfkit stops there anyway, but other tools (vLLM, HF "
                   "pipelines) serving this model will run past the end of the turn. Add its id to eos_token_id in "
                   "generation_config.json")
    if has_chat_template(tokenizer):
        chat = [{"role": "user", "content": "x"}]
        with_cue = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        if with_cue == tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=False):
            report.add("warning", "template_no_generation_prompt", "the chat template ignores add_generation_prompt: "
                       "a prompt ends without an assistant cue, so the policy may continue the user's turn (fine only "
                       "when the last user turn itself cues the reply, as Mistral's [/INST] does)")


def check_prompts(report: Report, tokenizer, rows: list[dict], stats: dict) -> None:
    from rlhfkit.data.chat import is_rendered

    lengths = [len(r["prompt_ids"]) for r in rows]
    shown = []
    for r in rows[:2]:
        ids = r["prompt_ids"]
        shown.append({"rendered": r["prompt_text"], "tokens": tokenizer.convert_ids_to_tokens(ids[:12]) +
                      (["..."] if len(ids) > 12 else []), "length": len(ids)})
    report.sections["prompts"] = {"count": stats.get("kept", len(rows)), "truncated": stats.get("truncated", 0),
                                  "length_min_mean_max": [min(lengths), round(sum(lengths) / len(lengths), 1),
                                                          max(lengths)], "examples": shown}
    bos = tokenizer.bos_token_id
    doubled = [i for i, r in enumerate(rows) if bos is not None and r["prompt_ids"][:2] == [bos, bos]]
    if doubled:
        report.add("warning", "doubled_bos", f"{len(doubled)} prompt(s) start with BOS twice (e.g. row {doubled[0]}): "
                   "the text already holds the BOS the tokenizer adds. Store prompts without it")
    rendered = [i for i, r in enumerate(rows) if isinstance(r["prompt"], str) and is_rendered(tokenizer, r["prompt"])]
    if rendered:
        report.add("info", "prompt_already_rendered", f"{len(rendered)} prompt(s) already hold the chat template's "
                   "markup; they are used as is (the template is not applied twice)")
    if stats.get("truncated"):
        report.add("warning", "prompts_truncated", f"{stats['truncated']} of {len(rows)} sampled prompts are longer "
                   "than max_prompt_length and lose their beginning")


def check_rollout(report: Report, exp, max_new_tokens: int) -> None:
    n = exp.batch_size
    lengths = exp.response_mask.sum(1)
    eos_rate = exp.eos.float().mean().item()
    cut = (~exp.eos).float().mean().item()
    report.sections["rollout"] = {
        "samples": n, "eos_rate": round(eos_rate, 3), "truncation_rate": round(cut, 3),
        "response_length_mean": round(lengths.float().mean().item(), 1),
        "examples": [{"response": r[:200], "eos": bool(e)} for r, e in zip(exp.responses[:3], exp.eos.tolist())]}
    if cut > 0.5:
        report.add("warning", "high_truncation", f"{cut:.0%} of sampled responses hit max_new_tokens={max_new_tokens} "
                   "without EOS: raise max_new_tokens, or check the EOS ids and the template's end of turn")


def check_rewards(report: Report, scores: torch.Tensor, group_size: int, algo: str) -> None:
    finite = torch.isfinite(scores)
    good = scores[finite]
    section = {"nan_or_inf": int((~finite).sum())}
    if len(good):
        section.update(mean=round(good.mean().item(), 4), std=round(good.std(unbiased=False).item(), 4),
                       min=round(good.min().item(), 4), max=round(good.max().item(), 4))
    if (~finite).any():
        report.add("blocking", "reward_nan",
                   f"{int((~finite).sum())} of {len(scores)} rewards are NaN or infinite")
    if len(good) > 1 and good.std(unbiased=False).item() < 1e-8:
        report.add("warning", "reward_no_spread",
                   f"all {len(good)} rewards equal {good[0].item():.4g}: no learning signal")
    if len(good) and good.abs().max().item() > 100:
        report.add("warning", "reward_scale", f"rewards reach {good.abs().max().item():.3g}; scale them (or normalize "
                   "the reward model) so a KL coefficient of ~0.05 still matters")
    if group_size > 1 and len(scores) % group_size == 0:
        groups = scores.view(-1, group_size)  # (B, G)
        uniform = ((groups - groups[:, :1]).abs().amax(1) < 1e-8).float().mean().item()
        section["uniform_groups_share"] = round(uniform, 3)
        if uniform > 0.5:
            report.add("warning", "uniform_groups", f"{uniform:.0%} of {algo} groups of {group_size} have all-equal "
                       "rewards: their advantages are 0 (no signal). Use harder/easier prompts or a larger n")
    report.sections["reward"] = section


def _gib(n_bytes: float) -> float:
    return round(n_bytes / 2 ** 30, 4)


def estimate(report: Report, policy, parts: dict[str, tuple[int, bool]], rows_per_step: int, seq_len: int,
             gen_seconds: float, sample_rows: int, max_new_tokens: int, response_length: int) -> None:
    """Rough memory and time of one step. parts: name -> (parameters, trained?). A trained model holds
    weights, grads and Adam's two float32 moments; a frozen one its weights. Activations are not counted."""
    width = torch.finfo(next(policy.parameters()).dtype).bits // 8
    memory = {name: _gib(count * (2 * width + 8 if trained else width)) for name, (count, trained) in parts.items()}
    vocab = policy.get_output_embeddings().weight.shape[0]
    # generation time measured on the sample, scaled to the step's rows and to max_new_tokens
    gen_per_step = gen_seconds * rows_per_step / max(sample_rows, 1) * max_new_tokens / max(response_length, 1)
    report.sections["estimate"] = {
        "parameters": {name: count for name, (count, _) in parts.items()},
        "memory_gib_models": memory, "memory_gib_models_total": round(sum(memory.values()), 4),
        "memory_gib_logits_per_forward": _gib(rows_per_step * (max_new_tokens + 1) * vocab * 4),
        "rows_per_step": rows_per_step, "tokens_per_row": seq_len,
        "generation_seconds_per_step": round(gen_per_step, 2),
        "note": "rough: generation time measured here and scaled to the step; the update adds about 3 forwards "
                "per epoch; activations (grow with rows x tokens x hidden x layers) are not counted"}


# ---------------------------------------------------------------- the run

def _function_scores(fn, exp) -> torch.Tensor:
    raw = fn(list(exp.prompts), list(exp.responses), **exp.fields)
    return torch.tensor([float(x) for x in raw], dtype=torch.float32)


def diagnose(cfg: DoctorConfig) -> Report:
    """Load, sample and check; returns the report (nothing printed)."""
    from rlhfkit import models as M
    from rlhfkit.data import load_prompts
    from rlhfkit.data.tokenize import prompt_fields, tokenize_prompts
    from rlhfkit.rollout import GenerationSettings, load_reward_function, load_reward_scorer, make_experience
    from rlhfkit.trainers.algorithms import get_algorithm
    from rlhfkit.trainers.common import resolve_device, set_seed

    report = Report()
    spec = get_algorithm(cfg.algo)
    n = cfg.n or spec.n
    device = resolve_device(cfg.device)
    trc = cfg.trust_remote_code
    set_seed(cfg.seed)
    tokenizer = M.load_tokenizer(cfg.policy, trust_remote_code=trc)
    raw_pad = _raw_pad_token(cfg.policy, trc)
    policy = M.load_causal_lm(cfg.policy, dtype=cfg.dtype, device=device, trust_remote_code=trc)
    check_tokenizer(report, tokenizer, raw_pad, policy)
    rows, stats = tokenize_prompts(load_prompts(cfg.prompts, prompt_field=cfg.prompt_field)[:cfg.num_prompts],
                                   tokenizer, cfg.max_prompt_length)
    if not rows:
        report.add("blocking", "no_prompts", f"{cfg.prompts}: no prompt is left after the length policy")
        return report
    check_prompts(report, tokenizer, rows, stats)
    if "tokenizer_larger_than_model" in report.codes():
        return report  # sampling would index past the embeddings

    count = sum(p.numel() for p in policy.parameters())
    parts = {"policy": (count, True)}
    parts["reference"] = (count, False)  # a frozen copy whenever kl_coef > 0 (none with LoRA: adapters off)
    if cfg.reward_model:
        scorer = load_reward_scorer(cfg.reward_model, tokenizer, dtype=cfg.dtype, device=device, trust_remote_code=trc)
        scorer.add_prompts(rows)
        report.sections["reward_model"] = {"how": scorer.how}
        if not scorer.reuse_ids:
            report.add("info", "tokenizer_mismatch", scorer.how)
        parts["reward_model"] = (sum(p.numel() for p in scorer.reward_model.parameters()), False)
    else:
        fn = load_reward_function(cfg.reward_fn)
    if spec.critic:
        base = cfg.critic or cfg.reward_model or cfg.policy
        try:
            M.check_critic_base(base, tokenizer, trust_remote_code=trc)
        except ConfigError as err:
            report.add("blocking", "critic_vocabulary", str(err))
        same_as_rm = cfg.critic is None and cfg.reward_model and "reward_model" in parts
        parts["critic"] = (parts["reward_model"][0] if same_as_rm else count, True)

    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, n=n)
    start = time.perf_counter()
    exp = make_experience(policy, tokenizer, [r["prompt_text"] for r in rows], settings,
                          prompt_ids=[r["prompt_ids"] for r in rows], fields=prompt_fields(rows))
    gen_seconds = time.perf_counter() - start
    check_rollout(report, exp, cfg.max_new_tokens)
    try:
        scores = scorer(exp) if cfg.reward_model else _function_scores(fn, exp)
    except Exception as err:  # a reward function that fails on real samples is itself the finding
        report.add("blocking", "reward_error", f"{type(err).__name__}: {err}")
        return report
    check_rewards(report, scores.float().cpu(), n, cfg.algo)
    estimate(report, policy, parts, cfg.prompts_per_step * n, cfg.max_prompt_length + cfg.max_new_tokens,
             gen_seconds, exp.batch_size, cfg.max_new_tokens, exp.response_length)
    return report


def _raw_pad_token(path, trust_remote_code: bool):
    """The pad token as saved (load_tokenizer fills a missing one with EOS)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code).pad_token
    except (OSError, ValueError):
        return None


def run_doctor(cfg: DoctorConfig) -> int:
    """Print the report (text, or JSON with cfg.json); returns the exit status (0, 1 or 2)."""
    report = diagnose(cfg)
    print(json.dumps(report.as_dict(cfg.strict), indent=2, default=_jsonable) if cfg.json
          else report.as_text(cfg.strict))
    return report.exit_code(cfg.strict)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
