"""Load figure of `rlhfkit serve-reward`: requests/s and p50 / p99 latency at 1, 8 and 64 concurrent clients.

A benchmark, not a test. Starts `python -m rlhfkit serve-reward` on 127.0.0.1 (a free port) with a
tiny reward model built here (no download), or with --reward-model DIR; each client sends
POST /score requests of --rows rows back to back for --seconds; prints a Markdown table.

    PYTHONPATH=. python bench/reward_service_load.py [--clients 1,8,64] [--seconds 10] [--rows 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = "good bad fine ok the movie phone is was very not review : ?".split()


def tiny_reward_model(out: Path) -> str:
    from rlhfkit.models.tiny import build_tiny_classifier, build_tiny_tokenizer

    tok = build_tiny_tokenizer([" ".join(WORDS)])
    build_tiny_classifier(tok, seed=0, hidden_size=64, num_layers=2, num_heads=4).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return str(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, args: list[str]) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "serve-reward", "--reward-model", model, "--port",
                             str(port), "--device", "cpu", *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("serve-reward did not start")


def body(rows: int, rng: random.Random) -> dict:
    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return {"prompts": [f"review : {text(3)}" for _ in range(rows)],
            "responses": [text(rng.randint(4, 24)) for _ in range(rows)], "eos": [True] * rows}


async def load(url: str, clients: int, seconds: float, rows: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(i: int):
        nonlocal errors
        rng = random.Random(i)
        async with httpx.AsyncClient(timeout=120) as http:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                reply = await http.post(f"{url}/score", json=body(rows, rng))
                if reply.status_code == 200 and len(reply.json()["scores"]) == rows:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {"clients": clients, "requests": len(latencies), "errors": errors, "req_s": len(latencies) / wall,
            "rows_s": rows * len(latencies) / wall, "p50_ms": pick(0.50), "p99_ms": pick(0.99),
            "mean_ms": statistics.fmean(latencies) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward-model", default=None, help="reward model folder (default: a tiny one built here)")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rows", type=int, default=8, help="rows per request")
    parser.add_argument("--server-args", default="", help="extra serve-reward flags, e.g. '--max-wait-ms 2'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.reward_model or tiny_reward_model(Path(tmp) / "rm")
        port = free_port()
        proc = start_server(model, port, args.server_args.split())
        try:
            results = [asyncio.run(load(f"http://127.0.0.1:{port}", int(c), args.seconds, args.rows))
                       for c in args.clients.split(",")]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nserve-reward, {'tiny reward model (2 layers, hidden 64)' if not args.reward_model else model}, "
          f"{args.rows} rows per request, {args.seconds:g} s per level; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {load1:.1f} at the end\n")
    print("| clients | requests/s | rows/s | p50 latency (ms) | p99 latency (ms) | requests | errors |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['clients']} | {r['req_s']:.1f} | {r['rows_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['requests']} | {r['errors']} |")


if __name__ == "__main__":
    main()
