"""Shared setup of the benchmarks: the two model sizes, the prompts, the reward function.

Everything is built from a config into a local folder (nothing is downloaded), once per size:

    <models-dir>/<size>/policy   causal LM + tokenizer (the policy and the reference)
    <models-dir>/<size>/reward   sequence-classification model, num_labels=1 (PPO's reward model)
    <models-dir>/<size>/value    sequence-classification model, num_labels=1 (PPO's value model)
    <models-dir>/<size>/prompts_grpo.jsonl   the 8 prompts
    <models-dir>/<size>/prompts_ppo.jsonl    the same 8 prompts, 4 copies each (PPO samples once per row)

Both sides of every comparison read these folders and call `reward` below, so the work is the same.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import resource
import statistics
import string
import tempfile
import time
from pathlib import Path

import torch

# Llama configs of the two sizes; vocab is the tokenizer's size (4 special tokens included).
SIZES = {
    "tiny": dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512, vocab=1024),
    "small": dict(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048, vocab=8192),
}

# The matched settings of issue 6: 8 prompts x 4 samples, 32 new tokens, temperature 1, beta 0.04.
PROMPTS_PER_STEP = 8
SAMPLES_PER_PROMPT = 4
MAX_NEW_TOKENS = 32
TEMPERATURE = 1.0
BETA = 0.04
LR = 1e-6

DEFAULT_MODELS_DIR = os.path.join(tempfile.gettempdir(), "rlhfkit-bench")


def vocabulary(size: int) -> list[str]:
    """`size - 4` distinct word-level tokens: digits, a few marks, then letter words a, b, ..., aa, ab, ...

    With the 4 special tokens, `build_tiny_tokenizer` makes a vocabulary of exactly `size`.
    """
    tokens = list("0123456789") + list(".,?:+=")
    for length in itertools.count(1):
        for letters in itertools.product(string.ascii_lowercase, repeat=length):
            if len(tokens) >= size - 4:
                return tokens
            tokens.append("".join(letters))


def prompts(size: str) -> list[str]:
    """The 8 benchmark prompts: 8 to 15 words, so left padding is exercised."""
    words = [w for w in vocabulary(SIZES[size]["vocab"]) if w.isalpha()]
    return [" ".join(words[(37 * i + 11 * j) % len(words)] for j in range(8 + i)) for i in range(PROMPTS_PER_STEP)]


def reward(prompts, completions, **kwargs) -> list[float]:
    """The Python reward of both sides: distinct-word ratio of the completion plus a length bonus.

    Called as reward(prompts, responses) by rlhfkit and reward(prompts=, completions=, ...) by TRL.
    Scores differ within a group, so group-normalized advantages are not all zero.
    """
    out = []
    for text in completions:
        words = str(text).split()
        out.append(len(set(words)) / (1.0 + len(words)) + 0.01 * len(words))
    return out


def reward_spec() -> str:
    """`reward` as an rlhfkit --reward-fn spec (path/to/file.py:function)."""
    return f"{Path(__file__).resolve()}:reward"


def build(size: str, models_dir: str = DEFAULT_MODELS_DIR) -> dict:
    """Build (once) and return the folders and prompt files of one size: {policy, reward, value, prompts_grpo, prompts_ppo}."""
    from rlhfkit.models.tiny import build_tiny_classifier, build_tiny_model, build_tiny_tokenizer

    if size not in SIZES:
        raise SystemExit(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    cfg = dict(SIZES[size])
    vocab = cfg.pop("vocab")
    root = Path(models_dir) / size
    paths = {"policy": root / "policy", "reward": root / "reward", "value": root / "value",
             "prompts_grpo": root / "prompts_grpo.jsonl", "prompts_ppo": root / "prompts_ppo.jsonl"}
    marker = root / "config.json"
    wanted = {"size": size, **SIZES[size], "prompts": prompts(size)}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return {k: str(v) for k, v in paths.items()}
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer([" ".join(vocabulary(vocab))])
    assert len(tokenizer) == vocab, (len(tokenizer), vocab)
    build_tiny_model(tokenizer, seed=0, **cfg).save_pretrained(paths["policy"])
    tokenizer.save_pretrained(paths["policy"])
    for name, seed in (("reward", 1), ("value", 2)):
        model = build_tiny_classifier(tokenizer, seed=seed, **cfg)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    rows = prompts(size)
    paths["prompts_grpo"].write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    paths["prompts_ppo"].write_text("".join(json.dumps({"prompt": p}) + "\n"
                                            for p in rows for _ in range(SAMPLES_PER_PROMPT)))
    marker.write_text(json.dumps(wanted))
    return {k: str(v) for k, v in paths.items()}


def rl_config(algo: str, paths: dict, output: str, steps: int, shape: dict | None = None,
              overrides: dict | None = None):
    """Our RLConfig with the matched settings: 32 rows per step (GRPO 8 prompts x 4, PPO 32 rows x 1),
    32 new tokens, temperature 1, beta 0.04 at the algorithm's KL placement (GRPO: k3 in the loss, as
    TRL; PPO: k1 in the reward, as TRL's PPO), one optimizer step per batch, fp32, CPU.

    shape: {prompts_per_step, n, max_new_tokens} of another workload (bench/workload.py `shape`);
    overrides: further RLConfig fields (the benchmarks' pass-through options such as `engine`)."""
    from rlhfkit.trainers.rl_config import RLConfig

    if shape is None:
        per_step = PROMPTS_PER_STEP if algo == "grpo" else PROMPTS_PER_STEP * SAMPLES_PER_PROMPT
        shape = {"prompts_per_step": per_step, "n": SAMPLES_PER_PROMPT if algo == "grpo" else 1,
                 "max_new_tokens": MAX_NEW_TOKENS}
    common = dict(policy=paths["policy"], output=output, algo=algo, steps=steps, max_new_tokens=shape["max_new_tokens"],
                  temperature=TEMPERATURE, kl_coef=BETA, lr=LR, dtype="float32", device="cpu", seed=0,
                  ppo_epochs=1, report_to=("jsonl",), log_every=1, save_every=0,
                  prompts_per_step=shape["prompts_per_step"], n=shape["n"],
                  probe_every=0)  # TRL has no held-out probe: its generations are not part of the matched work
    common.update(overrides or {})
    if algo == "grpo":
        return RLConfig(prompts=paths["prompts_grpo"], reward_fn=reward_spec(), **common)
    if algo == "ppo":
        return RLConfig(prompts=paths["prompts_ppo"], reward_model=paths["reward"], critic=paths["value"], **common)
    raise SystemExit(f"--algo must be grpo or ppo, got {algo!r}")


# ---------------------------------------------------------------- measuring

def set_threads(n: int) -> None:
    """Intra-op threads for this process. The benchmarks default to 1: on a CPU shared with other
    jobs, every parallel region of a 2-thread pool waits for a sibling thread that may be
    descheduled, and the many small ops of decoding slowed 5-25x (measured here at load ~5 on
    2 cores), erratically. One thread degrades in proportion to the CPU share it gets."""
    torch.set_num_threads(n)


def sync() -> None:
    """Wait for queued device work so a timer reads the real end (a no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def now() -> float:
    sync()
    return time.perf_counter()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's own memory.
    Not ru_maxrss: Linux carries that across exec, so a child started from a big parent would
    report the parent's peak. Elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024


def rss_mb() -> float:
    """Current resident memory, MiB (psutil when installed)."""
    try:
        import psutil
    except ImportError:
        return float("nan")
    return psutil.Process().memory_info().rss / 2**20


def median(xs) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def machine() -> str:
    """One line: CPU model, cores, torch threads, load average (the machine is shared), versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, load average {load}")
