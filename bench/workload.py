"""The two benchmark workloads: `uniform` (bench/common.py, unchanged) and `realistic`.

realistic: what real RLHF batches look like, where padding and finished rows cost something.
- prompts of 16 to 128 tokens, log-uniform (a pool of PROMPT_POOL prompts, seed 0): many short
  prompts, a long tail of long ones, so left padding to the longest prompt of a batch is real;
- responses that end with EOS at long-tailed lengths, at most MAX_NEW_TOKENS = 128 new tokens.
  The random-weight bench policy never samples EOS, so it is first taught to stop: a short SFT
  (plain torch loop, AdamW, loss on the response tokens and the EOS) on synthetic demonstrations
  whose responses are random words of geometric length (mean RESPONSE_MEAN tokens, capped at
  127) followed by EOS. After SFT the sampled lengths are measured (mean, p90, max, share ending
  in EOS); the build fails unless the mean is <= MAX_NEW_TOKENS / 3 and most responses end in EOS;
- GRPO: 8 prompts x 8 samples per step; PPO: 32 prompts x 1 sample, with the size's reward and
  value models (bench/common.py, the random-weight ones of the uniform workload).

Built once per size into <models-dir>/<size>-realistic/ (policy = the SFT'd model; reward and
value are the uniform workload's folders) and reused while config.json matches.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch

import common

WORKLOADS = ("uniform", "realistic")
MAX_NEW_TOKENS = 128
PROMPT_TOKENS = (16, 128)  # log-uniform in this range (inclusive)
PROMPT_POOL = 64
RESPONSE_MEAN = 28.0  # geometric response length before the EOS; the tail is cut at MAX_NEW_TOKENS - 1
SETTINGS = {  # algo -> (prompts per step, samples per prompt)
    "grpo": (8, 8),
    "ppo": (32, 1),
}
# SFT schedule per size: (sequences per batch, learning rate, steps per round, most rounds). After each
# round the lengths are measured; training stops once they are in the wanted range.
SFT = {"tiny": (16, 2e-3, 60, 6), "small": (8, 5e-4, 30, 6)}
SAMPLE_ROWS = 64  # responses sampled to measure the length distribution


def prompt_lengths(n: int, seed: int) -> list[int]:
    """n prompt lengths, log-uniform over PROMPT_TOKENS (rounded, inclusive)."""
    rng = random.Random(seed)
    lo, hi = math.log(PROMPT_TOKENS[0]), math.log(PROMPT_TOKENS[1] + 1)
    return [min(PROMPT_TOKENS[1], int(math.exp(rng.uniform(lo, hi)))) for _ in range(n)]


def response_length(rng: random.Random) -> int:
    """A geometric number of response words (mean RESPONSE_MEAN, >= 1), cut at MAX_NEW_TOKENS - 1 (the EOS follows)."""
    p = 1.0 / RESPONSE_MEAN
    return min(MAX_NEW_TOKENS - 1, 1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - p)))


def _words(size: str) -> list[str]:
    return [w for w in common.vocabulary(common.SIZES[size]["vocab"]) if w.isalpha()]


def prompts(size: str) -> list[str]:
    """The PROMPT_POOL benchmark prompts (words only: no special token, so none is EOS or pad)."""
    words, rng = _words(size), random.Random(1)
    return [" ".join(rng.choice(words) for _ in range(n)) for n in prompt_lengths(PROMPT_POOL, seed=0)]


def length_stats(lengths, eos=None) -> dict:
    """{rows, mean, p50, p90, max, eos_share} of response lengths (tokens, the EOS included)."""
    xs = sorted(int(x) for x in lengths)
    if not xs:
        return {"rows": 0}
    q = lambda f: xs[min(len(xs) - 1, int(f * len(xs)))]  # noqa: E731 (nearest rank)
    out = {"rows": len(xs), "mean": sum(xs) / len(xs), "p50": q(0.5), "p90": q(0.9), "max": xs[-1]}
    if eos is not None:
        out["eos_share"] = sum(bool(e) for e in eos) / len(xs)
    return out


def format_stats(s: dict) -> str:
    if not s.get("rows"):
        return "no responses"
    eos = f", {100 * s['eos_share']:.0f}% end in EOS" if "eos_share" in s else ""
    return f"{s['rows']} responses: mean {s['mean']:.1f}, p50 {s['p50']}, p90 {s['p90']}, max {s['max']} tokens{eos}"


def sample_lengths(model, tokenizer, prompt_texts: list[str], seed: int = 0) -> dict:
    """Sample one response per prompt (temperature 1, MAX_NEW_TOKENS) and measure the lengths (EOS included)."""
    torch.manual_seed(seed)
    enc = tokenizer(prompt_texts, padding=True, padding_side="left", return_tensors="pt")
    model.eval()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=1.0, top_p=1.0,
                             top_k=0, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    resp = out[:, enc["input_ids"].shape[1]:]  # (N, R)
    is_eos = resp == tokenizer.eos_token_id
    ended = is_eos.any(1)
    lengths = torch.where(ended, is_eos.int().argmax(1) + 1, torch.full_like(ended, resp.shape[1], dtype=torch.long))
    return length_stats(lengths.tolist(), ended.tolist())


def _demo_batch(tokenizer, words: list[str], rng: random.Random, rows: int):
    """(input_ids, attention_mask, labels) of `rows` demonstrations: prompt words, response words, EOS.
    Labels are -100 except on the response and its EOS; right padding."""
    seqs, n_prompt = [], []
    for p_len in prompt_lengths(rows, seed=rng.randrange(1 << 30)):
        prompt = tokenizer(" ".join(rng.choice(words) for _ in range(p_len)))["input_ids"]
        response = tokenizer(" ".join(rng.choice(words) for _ in range(response_length(rng))))["input_ids"]
        seqs.append(prompt + response + [tokenizer.eos_token_id])
        n_prompt.append(len(prompt))
    width = max(map(len, seqs))
    ids = torch.full((rows, width), tokenizer.pad_token_id)
    mask = torch.zeros((rows, width), dtype=torch.long)
    labels = torch.full((rows, width), -100)
    for i, (s, p) in enumerate(zip(seqs, n_prompt)):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
        labels[i, p:len(s)] = torch.tensor(s[p:])
    return ids, mask, labels


def teach_to_stop(model, tokenizer, size: str, log=print) -> dict:
    """SFT `model` in place until sampled responses stop at the wanted lengths; returns their length stats."""
    batch, lr, steps, rounds = SFT[size]
    words, rng = _words(size), random.Random(0)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    probe = prompts(size)[:SAMPLE_ROWS]
    stats = {}
    for r in range(rounds):
        model.train()
        for _ in range(steps):
            ids, mask, labels = _demo_batch(tokenizer, words, rng, batch)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        stats = sample_lengths(model, tokenizer, probe, seed=r)
        log(f"  SFT round {r + 1}: loss {float(loss):.3f}; sampled {format_stats(stats)}")
        if stats["mean"] <= MAX_NEW_TOKENS / 3 and stats["eos_share"] >= 0.9:
            return stats
    raise SystemExit(f"the {size} policy did not learn to stop in {rounds} SFT rounds ({format_stats(stats)}); "
                     "raise SFT[size] in bench/workload.py")


def build(size: str, models_dir: str = common.DEFAULT_MODELS_DIR, log=print) -> dict:
    """Build (once) the realistic workload of one size: {policy, reward, value, prompts_grpo, prompts_ppo,
    length_stats} (length_stats: the sampled response lengths measured at build time)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = common.build(size, models_dir)
    root = Path(models_dir) / f"{size}-realistic"
    paths = {"policy": str(root / "policy"), "reward": base["reward"], "value": base["value"],
             "prompts_grpo": str(root / "prompts.jsonl"), "prompts_ppo": str(root / "prompts.jsonl")}
    marker = root / "config.json"
    rows = prompts(size)
    wanted = {"size": size, **common.SIZES[size], "prompts": rows, "sft": SFT[size], "response_mean": RESPONSE_MEAN,
              "max_new_tokens": MAX_NEW_TOKENS}
    wanted = json.loads(json.dumps(wanted))  # as it reads back (tuples become lists)
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("wanted") == wanted:
            return {**paths, "length_stats": saved["length_stats"]}
    log(f"building the realistic {size} workload in {root} (SFT so that the policy stops)")
    tokenizer = AutoTokenizer.from_pretrained(base["policy"])
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise SystemExit("the waste counters need pad != eos (bench/waste.py)")
    model = AutoModelForCausalLM.from_pretrained(base["policy"], dtype=torch.float32)
    stats = teach_to_stop(model, tokenizer, size, log)
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(paths["policy"])
    tokenizer.save_pretrained(paths["policy"])
    Path(paths["prompts_grpo"]).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    marker.write_text(json.dumps({"wanted": wanted, "length_stats": stats}))
    log(f"realistic {size} workload built: sampled {format_stats(stats)}")
    return {**paths, "length_stats": stats}


def paths_for(workload: str, size: str, models_dir: str) -> dict:
    """The model folders and prompt files of a workload (built on first use)."""
    if workload == "uniform":
        return common.build(size, models_dir)
    if workload == "realistic":
        return build(size, models_dir)
    raise SystemExit(f"--workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")


def shape(workload: str, algo: str) -> dict:
    """{prompts_per_step, n, max_new_tokens} of a workload and algorithm (uniform: bench/common.py's)."""
    if workload == "realistic":
        per_step, n = SETTINGS[algo]
        return {"prompts_per_step": per_step, "n": n, "max_new_tokens": MAX_NEW_TOKENS}
    if algo == "grpo":
        return {"prompts_per_step": common.PROMPTS_PER_STEP, "n": common.SAMPLES_PER_PROMPT,
                "max_new_tokens": common.MAX_NEW_TOKENS}
    return {"prompts_per_step": common.PROMPTS_PER_STEP * common.SAMPLES_PER_PROMPT, "n": 1,
            "max_new_tokens": common.MAX_NEW_TOKENS}


# ---------------------------------------------------------------- command-line options of both benchmarks

PASS_THROUGH = (("engine", "engine"), ("micro_batch_tokens", "micro_batch_tokens"), ("padding_free", "padding_free"))


def add_arguments(parser) -> None:
    """--workload, and our side's pass-through options (forwarded to RLConfig only when given)."""
    import argparse

    parser.add_argument("--workload", choices=WORKLOADS, default="uniform",
                        help="uniform (bench/common.py, the default) or realistic (bench/workload.py)")
    parser.add_argument("--engine", default=None, help="our side: RLConfig.engine (the rollout engine)")
    parser.add_argument("--micro-batch-tokens", type=int, default=None,
                        help="our side: RLConfig.micro_batch_tokens (token budget of a micro-batch)")
    parser.add_argument("--padding-free", action=argparse.BooleanOptionalAction, default=None,
                        help="our side: RLConfig.padding_free (packed update passes)")
    parser.add_argument("--ours-tag", default="", help="a label of our side's options, kept in the JSON and "
                        "shown by bench/tables.py, to tell runs with different options apart")


def overrides(args) -> dict:
    """The RLConfig fields given on the command line; a clear error when this rlhfkit has no such field."""
    import dataclasses

    from rlhfkit.trainers.rl_config import RLConfig

    known = {f.name for f in dataclasses.fields(RLConfig)}
    out = {}
    for attr, field in PASS_THROUGH:
        value = getattr(args, attr, None)
        if value is None:
            continue
        if field not in known:
            flag = "--" + attr.replace("_", "-")
            raise SystemExit(f"{flag} needs RLConfig.{field}, which this rlhfkit does not have "
                             f"(rlhfkit/trainers/rl_config.py); drop the option or update rlhfkit")
        out[field] = value
    return out
