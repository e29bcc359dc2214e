"""The GPU measurements of issue 20, as one prepared run: bf16, one GPU, everything into one JSON file.

For each model, the bench's `small` Llama (42 M parameters, bench/common.py) and a ~0.5 B-parameter
Qwen2-style model built from a config (Qwen2-0.5B's shapes: hidden 896, 24 layers, 14 heads, 2 KV
heads, intermediate 4864, vocabulary 151936; random weights, nothing downloaded):

- generation tokens/s: HF `generate` of 64 rows x 128 new tokens (no early stop), bf16, KV cache;
- training tokens/s, MFU and peak memory: forward + backward + AdamW step on 16 x 512 tokens,
  bf16 weights; MFU = 6 x parameters x tokens/s / the GPU's peak bf16 FLOP/s (--peak-tflops,
  default 989: H100 / H200 SXM dense; attention FLOPs are not counted, so it is a lower bound);
- RL steps: `train_rl` GRPO on the realistic workload's shape (8 prompts x 8, 128 new tokens), bf16,
  median step time of the kept steps (the first discarded), completion tokens/s, peak memory, and
  the waste counters of bench/waste.py.

Needs only torch, transformers, accelerate (and rlhfkit from this tree). A time budget (--budget-s,
default 420) skips what would not fit, saying so in the JSON. Without CUDA, --cpu-smoke runs the same
code on tiny shapes on the CPU so that the script is known to work; its numbers are not GPU figures.

    bash bench/gpu_check.sh [OUT.json]          # the wrapper: CUDA tests, then this script
    python bench/gpu_check.py --out gpu.json [--cpu-smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import waste  # noqa: E402
import workload  # noqa: E402

QWEN2_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab=151936)
# CPU smoke: the same code on shapes small enough for a shared CPU
SMOKE = {"qwen": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab=1024),
         "gen": (4, 8), "train": (2, 32), "rl_steps": 3, "rl_shape": {"prompts_per_step": 2, "n": 2,
                                                                       "max_new_tokens": 8}}
FULL = {"gen": (64, 128), "train": (16, 512), "rl_steps": 5, "rl_shape": {"prompts_per_step": 8, "n": 8,
                                                                          "max_new_tokens": 128}}


def build_qwen2(models_dir: str, shape: dict) -> str:
    """A random-weight Qwen2ForCausalLM of `shape` with a word-level tokenizer of its vocabulary, saved once."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlhfkit.models.tiny import build_tiny_tokenizer

    cfg = dict(shape)
    vocab = cfg.pop("vocab")
    root = Path(models_dir) / f"qwen2-{cfg['hidden_size']}x{cfg['num_hidden_layers']}"
    if (root / "config.json").is_file():
        return str(root)
    tokenizer = build_tiny_tokenizer([" ".join(common.vocabulary(vocab))])
    config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, **cfg)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def measure_generation(path: str, device, dtype, rows: int, new_tokens: int) -> dict:
    """tokens/s of HF generate, `rows` prompts of 16-128 words, exactly `new_tokens` new tokens each."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    words = [w for w in common.vocabulary(min(len(tok), 1024)) if w.isalpha()]
    lengths = workload.prompt_lengths(rows, seed=0)
    texts = [" ".join(words[(7 * i + j) % len(words)] for j in range(n)) for i, n in enumerate(lengths)]
    enc = tok(texts, padding=True, padding_side="left", return_tensors="pt").to(device)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=0,
              top_p=1.0, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        model.generate(**enc, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        _reset_peak(device)
        _sync(device)
        start = time.perf_counter()
        model.generate(**enc, **kw)
        _sync(device)
        seconds = time.perf_counter() - start
    return {"rows": rows, "new_tokens": new_tokens, "prompt_width": enc["input_ids"].shape[1], "seconds": seconds,
            "tokens_per_s": rows * new_tokens / seconds, "peak_memory_gib": _peak_gib(device)}


def measure_training(path: str, device, dtype, rows: int, width: int, peak_tflops: float, iters: int = 5) -> dict:
    """Forward + backward + AdamW step on (rows, width) tokens: tokens/s, MFU (6 N per token), peak memory."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.randint(4, model.config.vocab_size, (rows, width), device=device)

    def step():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocates the AdamW state)
    _reset_peak(device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / iters
    tokens_per_s = rows * width / seconds
    mfu = 6 * params * tokens_per_s / (peak_tflops * 1e12) if device.type == "cuda" else None
    return {"parameters": params, "rows": rows, "width": width, "step_s": seconds, "tokens_per_s": tokens_per_s,
            "mfu": mfu, "peak_tflops": peak_tflops, "peak_memory_gib": _peak_gib(device)}


def measure_rl(path: str, device, dtype_name: str, steps: int, shape: dict, prompts_file: str) -> dict:
    """train_rl GRPO (bf16) on the realistic shape: step times, tokens/s, peak memory, waste."""
    import rlhfkit.reporting
    import rlhfkit.trainers.rl as rl
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    counter = waste.WasteCounter(tok.pad_token_id, tok.eos_token_id)
    ends, tokens, snaps = [], [], []
    undo = waste.instrument_train_rl(counter, on_generate=lambda gen: lambda *a, **k: _count(gen(*a, **k), tokens))
    progress = rlhfkit.reporting.progress

    def cut(*args, **kwargs):
        bar = progress(*args, **kwargs)
        update = bar.update

        def update_and_cut(n=1, **numbers):
            update(n, **numbers)
            if n:
                _sync(device)
                ends.append(time.perf_counter())
                snaps.append(counter.snapshot())
                counter.reset()
        bar.update = update_and_cut
        return bar

    rl.progress = cut
    paths = {"policy": path, "prompts_grpo": prompts_file}
    _reset_peak(device)
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as out:
            cfg = common.rl_config("grpo", paths, out, steps, shape, {"dtype": dtype_name, "device": device.type})
            rl.train_rl(cfg)
    finally:
        rl.progress = progress
        undo()
        counter.detach()
    times = [b - a for a, b in zip([start] + ends[:-1], ends)][1:]  # the first step (loading) discarded
    step = common.median(times)
    return {"steps": steps, "shape": shape, "step_times_s": times, "step_s": step,
            "tokens_per_s": common.median(tokens[1:]) / step, "peak_memory_gib": _peak_gib(device),
            "waste": waste.summarize(snaps[1:])}


def _count(result, tokens: list):
    tokens.append(int(result.response_mask.sum()))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (no CUDA needed)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what starts after this many seconds")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak, TFLOP/s")
    parser.add_argument("--models-dir", default=os.path.join(tempfile.gettempdir(), "rlhfkit-gpu-check"))
    parser.add_argument("--extra", default=None, help="a JSON file merged into the result (the wrapper's test run)")
    args = parser.parse_args()
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        raise SystemExit("no CUDA device: run with --cpu-smoke for the CPU smoke version (not GPU figures)")
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    plan = SMOKE if args.cpu_smoke else FULL
    dtype_name = "float32" if args.cpu_smoke else "bfloat16"
    dtype = getattr(torch, dtype_name)
    if args.cpu_smoke:
        torch.set_num_threads(1)
    result = {"cuda": cuda, "cpu_smoke": args.cpu_smoke, "device": torch.cuda.get_device_name() if cuda else "cpu",
              "dtype": dtype_name, "torch": torch.__version__, "machine": common.machine(), "models": {}}
    if args.extra and Path(args.extra).is_file():
        result.update(json.loads(Path(args.extra).read_text()))
    small = common.build("small" if not args.cpu_smoke else "tiny", args.models_dir)["policy"]
    qwen = build_qwen2(args.models_dir, SMOKE["qwen"] if args.cpu_smoke else QWEN2_05B)
    for name, path in (("small", small), ("qwen2-0.5b", qwen)):
        prompts_file = os.path.join(path, "gpu_check_prompts.jsonl")
        tok_words = [w for w in common.vocabulary(1024) if w.isalpha()]
        Path(prompts_file).write_text("".join(json.dumps({"prompt": " ".join(tok_words[(5 * i + j) % len(tok_words)]
                                                                             for j in range(n))}) + "\n"
                                              for i, n in enumerate(workload.prompt_lengths(64, seed=2))))
        entry = result["models"][name] = {"path": path}
        for part, fn in (("generation", lambda: measure_generation(path, device, dtype, *plan["gen"])),
                         ("training", lambda: measure_training(path, device, dtype, *plan["train"], args.peak_tflops)),
                         ("rl_grpo", lambda: measure_rl(path, device, dtype_name, plan["rl_steps"], plan["rl_shape"],
                                                        prompts_file))):
            if time.perf_counter() - started > args.budget_s:
                entry[part] = {"skipped": f"time budget of {args.budget_s:.0f} s spent"}
                continue
            try:
                entry[part] = fn()
            except Exception:  # one failing part must not lose the others' numbers
                entry[part] = {"error": traceback.format_exc(limit=4)}
            print(f"{name} {part}: {json.dumps(entry[part])[:300]}", flush=True)
    result["wall_s"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
