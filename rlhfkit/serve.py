"""`rlhfkit serve-reward`: a reward model folder or a reward function behind HTTP (docs/reward-service.md).

GET /health -> {"status": "ok", "source": ...}; POST /score {"prompts", "responses", "eos"?, "fields"?}
-> {"scores"}. Requests that arrive within `max_wait_ms` of each other are scored together: a
`Batcher` queue collects them, one worker thread runs the forwards, in sub-batches whose padded
size (rows x longest row, in tokens) stays under `max_batch_tokens`. The scores are those of the
in-process scorers (`RewardModelScorer` on the re-tokenized texts, `FunctionScorer`), computed by
the same code. FastAPI + uvicorn, imported only here.
"""

from __future__ import annotations

import asyncio
import math
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from rlhfkit.config import ConfigError, option


@dataclass
class ServeRewardConfig:
    """`rlhfkit serve-reward`: serve a reward model or function over HTTP."""

    reward_model: str | None = option(None, "reward model folder (saved by `rlhfkit rm`, or any "
                                            "AutoModelForSequenceClassification with num_labels=1)")
    reward_fn: str | None = option(None, "reward function instead: path/to/file.py:fn, module:fn or exact_match")
    host: str = option("127.0.0.1", "address to listen on (0.0.0.0 for every interface)")
    port: int = option(8000, "TCP port")
    device: str = option("auto", "cpu, cuda, cuda:1, ... or auto")
    dtype: str = option("float32", "weights dtype", choices=("float32", "bfloat16", "float16", "auto"))
    max_batch_tokens: int = option(8192, "largest padded forward, rows x longest row in tokens (reward functions: "
                                         "rows)")
    max_wait_ms: float = option(5.0, "how long the first request of a batch waits for others to join it")
    normalize: bool = option(True, "subtract the reward model's saved mean and divide by its std, as `rlhfkit rl` does")
    trust_remote_code: bool = option(False, "allow model code from the hub (only for models you trust)")
    log_level: str = option("warning", "uvicorn log level", choices=("critical", "error", "warning", "info", "debug"))

    def __post_init__(self):
        if (self.reward_model is None) == (self.reward_fn is None):
            raise ConfigError("give exactly one of --reward-model (a folder) or --reward-fn (file.py:function)")
        if self.max_batch_tokens < 1 or self.max_wait_ms < 0 or not 0 <= self.port < 65536:
            raise ConfigError("max_batch_tokens must be >= 1, max_wait_ms >= 0 and port in 0..65535")


class ModelBackend:
    """A reward model scored exactly as `RewardModelScorer` scores re-tokenized texts."""

    def __init__(self, path: str, device="cpu", dtype: str = "float32", normalize: bool = True,
                 trust_remote_code: bool = False):
        from rlhfkit import models as M
        from rlhfkit.rollout.scoring import RewardModelScorer

        model = M.load_reward_model(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
        self.tokenizer = M.load_tokenizer(path, trust_remote_code=trust_remote_code)
        self.scorer = RewardModelScorer(model, self.tokenizer, normalize=normalize)
        self.scorer.reuse_ids = False  # texts only: always the reward model's own tokenization
        self.name = f"reward model {path}"

    def cost(self, prompt: str, response: str) -> int:
        tok = self.tokenizer
        return len(tok(prompt)["input_ids"]) + len(tok(response, add_special_tokens=False)["input_ids"]) + 1

    def score(self, prompts, responses, eos, fields) -> list[float]:
        rows = types.SimpleNamespace(prompts=prompts, responses=responses, eos=torch.tensor(eos, dtype=torch.bool),
                                     stopped=None, fields=fields)
        return self.scorer(rows).float().cpu().tolist()


class FunctionBackend:
    """A reward function `fn(prompts, responses, **fields)`, as `FunctionScorer` calls it."""

    def __init__(self, spec: str):
        from rlhfkit.rollout.scoring import FunctionScorer, load_reward_function

        self.scorer = FunctionScorer(load_reward_function(spec), name=spec)
        self.name = f"reward function {spec}"

    def cost(self, prompt: str, response: str) -> int:
        return 1

    def score(self, prompts, responses, eos, fields) -> list[float]:
        return self.scorer.score_texts(prompts, responses, **fields).tolist()


def sub_batches(costs: list[int], budget: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges in order, each with (hi - lo) x max(costs[lo:hi]) <= budget (or a single row)."""
    out, lo, longest = [], 0, 0
    for i, c in enumerate(costs):
        if i > lo and (i - lo + 1) * max(longest, c) > budget:
            out.append((lo, i))
            lo, longest = i, 0
        longest = max(longest, c)
    if costs:
        out.append((lo, len(costs)))
    return out


class Batcher:
    """Collects concurrent requests for up to `max_wait_ms` (or until `max_batch_tokens`), scores them
    together on one worker thread, and answers each with its own rows. Requests with other field
    names than the batch's first are scored in their own group."""

    def __init__(self, backend, max_batch_tokens: int, max_wait_ms: float):
        self.backend, self.budget, self.wait = backend, max_batch_tokens, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="reward-forward")

    async def score(self, prompts, responses, eos, fields) -> list[float]:
        costs = [self.backend.cost(p, r) for p, r in zip(prompts, responses)]
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(((prompts, responses, eos, fields, costs), future))
        return await future

    async def run(self) -> None:
        self.queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            tokens = sum(batch[0][0][4])
            deadline = loop.time() + self.wait
            while tokens < self.budget and (left := deadline - loop.time()) > 0:
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
                batch.append(item)
                tokens += sum(item[0][4])
            groups: dict = {}
            for item in batch:
                groups.setdefault(tuple(sorted(item[0][3])), []).append(item)
            for items in groups.values():
                try:
                    results = await loop.run_in_executor(self.pool, self._score_group, [it[0] for it in items])
                except Exception as err:  # the whole group failed: each request says why
                    for _, fut in items:
                        if not fut.done():
                            fut.set_exception(err)
                    continue
                for (_, fut), scores in zip(items, results):
                    if not fut.done():
                        fut.set_result(scores)

    def _score_group(self, requests: list) -> list[list[float]]:
        """Scores of several requests with the same field names, in sub-batches under the token budget."""
        prompts = [p for r in requests for p in r[0]]
        responses = [x for r in requests for x in r[1]]
        eos = [e for r in requests for e in r[2]]
        fields = {k: [v for r in requests for v in r[3][k]] for k in requests[0][3]}
        costs = [c for r in requests for c in r[4]]
        scores: list[float] = []
        for lo, hi in sub_batches(costs, self.budget):
            scores += self.backend.score(prompts[lo:hi], responses[lo:hi], eos[lo:hi],
                                         {k: v[lo:hi] for k, v in fields.items()})
        out, start = [], 0
        for r in requests:
            out.append(scores[start:start + len(r[0])])
            start += len(r[0])
        return out


def _request_error(body) -> str | None:
    """What is wrong with a /score body, or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object {\"prompts\": [...], \"responses\": [...]}"
    prompts, responses = body.get("prompts"), body.get("responses")
    if not isinstance(prompts, list) or not isinstance(responses, list) or len(prompts) != len(responses):
        return "`prompts` and `responses` must be lists of strings of the same length"
    if not all(isinstance(x, str) for x in prompts + responses):
        return "`prompts` and `responses` must hold strings"
    eos, fields = body.get("eos"), body.get("fields") or {}
    if eos is not None and (not isinstance(eos, list) or len(eos) != len(prompts)):
        return "`eos`, when given, must be a list of booleans, one per row"
    if not isinstance(fields, dict) or any(not isinstance(v, list) or len(v) != len(prompts) for v in fields.values()):
        return "`fields` must map each name to a list with one value per row"
    return None


def _require_web_stack() -> None:
    import importlib.util

    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise ConfigError("serve-reward needs FastAPI and uvicorn: pip install 'rlhfkit[serve]'")


def make_app(backend, max_batch_tokens: int = 8192, max_wait_ms: float = 5.0):
    """The FastAPI app of a backend (`ModelBackend` or `FunctionBackend`)."""
    from contextlib import asynccontextmanager

    _require_web_stack()
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse

    batcher = Batcher(backend, max_batch_tokens, max_wait_ms)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.pool.shutdown(wait=False)

    app = FastAPI(title="rlhfkit reward service", lifespan=lifespan)

    @app.get("/health")
    async def health():
        return {"status": "ok", "source": backend.name}

    @app.post("/score")
    async def score(body=Body(...)):
        problem = _request_error(body)
        if problem:
            return JSONResponse({"error": problem}, status_code=400)
        n = len(body["prompts"])
        eos = body.get("eos") or [False] * n
        try:
            scores = await batcher.score(body["prompts"], body["responses"], [bool(e) for e in eos],
                                         body.get("fields") or {})
        except Exception as err:  # the reward itself failed: say what, as a 500
            return JSONResponse({"error": f"{type(err).__name__}: {err}"}, status_code=500)
        bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if bad:
            return JSONResponse({"error": f"non-finite score for row {bad[0]}"}, status_code=500)
        return {"scores": scores}

    return app


def make_backend(cfg: ServeRewardConfig):
    from rlhfkit.trainers.common import configure_cpu_threads, resolve_device

    device = resolve_device(cfg.device)
    configure_cpu_threads(device)  # 1 thread on a CPU other jobs keep busy: many times faster there
    if cfg.reward_model:
        return ModelBackend(cfg.reward_model, device=device, dtype=cfg.dtype,
                            normalize=cfg.normalize, trust_remote_code=cfg.trust_remote_code)
    return FunctionBackend(cfg.reward_fn)


def run_serve(cfg: ServeRewardConfig) -> dict:
    """Load the reward, serve until Ctrl-C / SIGTERM."""
    _require_web_stack()
    import uvicorn

    backend = make_backend(cfg)
    app = make_app(backend, cfg.max_batch_tokens, cfg.max_wait_ms)
    print(f"rlhfkit serve-reward: {backend.name} on http://{cfg.host}:{cfg.port}", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    return {}
