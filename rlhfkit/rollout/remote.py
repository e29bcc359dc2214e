"""Rewards served elsewhere: `RemoteScorer` asks an HTTP reward service (docs/reward-service.md).

Same interface as the in-process scorers, `scorer(experience) -> (N,) float32`. Rows go out in
chunks of `batch_size`, up to `concurrency` requests at once, each with a timeout; a failed request
(no connection, timeout, HTTP error, an answer that is not one finite number per row) is retried
with exponential backoff, then handled by the policy `on_error`: "stop" raises `RewardServiceError`
naming the URL and the rows, "zero" scores those rows 0, "retry" keeps retrying. Every failure is
counted (`pop_metrics`). `WeightedScorer` sums several sources (local model or function, services,
a judge) with weights. `prefetch(experience)` starts the requests from the texts alone, so they
run while the trainer computes the reference and critic forwards (`make_experience`).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit

import torch

REMOTE_COUNTERS = "reward/remote_"  # metric prefix of the per-step request counters (summed, never averaged)

ON_ERROR = ("stop", "zero", "retry")


class RewardServiceError(RuntimeError):
    """A reward service (or judge) failed for some rows after its retries; the message names the URL and rows."""


def _short(text, limit: int = 160) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_reward_url(spec: str) -> tuple[str, float]:
    """"URL" or "URL:weight" -> (URL, weight). The weight is read after the last colon only when what
    precedes it is a whole URL with a port or a path (`http://h:8000:0.5`, `http://h/score:2`), so
    `http://h:8000` is a URL with port 8000 and weight 1."""
    spec = str(spec).strip()
    head, _, tail = spec.rpartition(":")
    weight = 1.0
    try:
        value = float(tail)
        parts = urlsplit(head)
        if parts.scheme and parts.netloc and (":" in parts.netloc or parts.path not in ("", "/")) and math.isfinite(value):
            spec, weight = head, value
    except ValueError:
        pass
    parts = urlsplit(spec)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"reward URL {spec!r}: expected http://host:port[/path][:weight], e.g. "
                         "http://127.0.0.1:8000 or http://127.0.0.1:8000:0.5")
    return spec.rstrip("/"), weight


class RequestPolicy:
    """Timeouts, retries with exponential backoff and the failure policy, shared by every remote source.

    Counters (failed attempts, re-sent requests, rows scored 0) accumulate until `pop_metrics`.
    """

    def __init__(self, timeout: float = 60.0, retries: int = 3, on_error: str = "stop", backoff: float = 0.5,
                 max_backoff: float = 30.0, concurrency: int = 8):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if timeout <= 0 or retries < 0 or concurrency < 1:
            raise ValueError("timeout must be > 0, retries >= 0 and concurrency >= 1")
        self.timeout, self.retries, self.on_error = timeout, retries, on_error
        self.backoff, self.max_backoff, self.concurrency = backoff, max_backoff, concurrency
        self._lock = threading.Lock()
        self.counts = {"failures": 0, "retries": 0, "zeroed": 0}

    def _count(self, name: str, k: int = 1) -> None:
        with self._lock:
            self.counts[name] += k

    def pop_metrics(self) -> dict:
        with self._lock:
            out = {f"{REMOTE_COUNTERS}{k}": float(v) for k, v in self.counts.items()}
            self.counts = dict.fromkeys(self.counts, 0)
        return out

    def run(self, attempt, rows: int, where: str):
        """attempt() -> result, raising on failure. Returns its result, or None when the rows are scored
        0 (policy "zero"); raises RewardServiceError (policy "stop") naming `where`."""
        tries = 0
        while True:
            try:
                return attempt()
            except Exception as err:  # any failure of a request follows the policy
                self._count("failures")
                last = err
            tries += 1
            if self.on_error != "retry" and tries > self.retries:
                break
            delay = min(self.backoff * 2 ** (tries - 1), self.max_backoff)
            print(f"[rlhfkit] {where}: attempt {tries} failed ({last}); retrying in {delay:.2g}s", file=sys.stderr)
            self._count("retries")
            time.sleep(delay)
        if self.on_error == "zero":
            self._count("zeroed", rows)
            print(f"[rlhfkit] {where}: scored 0 after {tries} failed attempts ({last})", file=sys.stderr)
            return None
        raise RewardServiceError(f"{where}: failed after {tries} attempt(s): {last}") from None


def check_service_scores(payload, n: int, lo: int, url: str, prompts, responses) -> list[float]:
    """The `scores` of a service's JSON answer for rows lo..lo+n-1, or a ValueError naming the URL and the row."""
    scores = payload.get("scores") if isinstance(payload, dict) else None
    if not isinstance(scores, list):
        raise ValueError(f"reward service {url}: the answer for rows {lo}-{lo + n - 1} has no list `scores`: "
                         f"{_short(payload)}")
    if len(scores) != n:
        raise ValueError(f"reward service {url}: {len(scores)} scores for {n} rows ({lo}-{lo + n - 1}); "
                         "it must return exactly one number per row, in order")
    for i, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise ValueError(f"reward service {url}: score {s!r} for row {lo + i} is not a finite number "
                             f"(prompt {_short(prompts[i])}, response {_short(responses[i])})")
    return [float(s) for s in scores]


def _rows(experience) -> tuple[list, list, list, dict]:
    """(prompts, responses, eos, fields) of an experience: eos is True where the response ended with
    the model's EOS token (not a stop string or the length limit)."""
    eos = experience.eos
    stopped = getattr(experience, "stopped", None)
    if stopped is not None:
        eos = eos & ~stopped
    fields = {k: (v.tolist() if torch.is_tensor(v) else list(v)) for k, v in (experience.fields or {}).items()}
    return list(experience.prompts), list(experience.responses), [bool(e) for e in eos.tolist()], fields


def _texts_key(experience) -> tuple:
    return (tuple(experience.prompts), tuple(experience.responses))


class _Prefetching:
    """`prefetch(experience)` starts scoring from the texts in a thread; the next `__call__` on the
    same texts waits for it instead of starting again."""

    def prefetch(self, experience) -> None:
        rows = _rows(experience)
        future: Future = Future()

        def work():
            try:
                future.set_result(self.score_rows(*rows))
            except BaseException as err:
                future.set_exception(err)

        threading.Thread(target=work, daemon=True, name=f"prefetch {self.name}").start()
        self._pending = (_texts_key(experience), future)

    def __call__(self, experience) -> torch.Tensor:
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is not None and pending[0] == _texts_key(experience):
            return pending[1].result()
        return self.score_rows(*_rows(experience))

    def pop_metrics(self) -> dict:
        return self.policy.pop_metrics()


class RemoteScorer(_Prefetching):
    """Scores with an HTTP reward service: POST {url}/score {"prompts", "responses", "eos", "fields"} ->
    {"scores"} (docs/reward-service.md), `batch_size` rows per request."""

    def __init__(self, url: str, batch_size: int = 32, policy: RequestPolicy | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.url, self.batch_size = url.rstrip("/"), batch_size
        self.policy = policy or RequestPolicy()
        self.name = f"service {self.url}"

    def _post(self, client, body: dict, lo: int, n: int) -> list[float]:
        try:
            reply = client.post(f"{self.url}/score", json=body, timeout=self.policy.timeout)
        except Exception as err:
            raise ConnectionError(f"reward service {self.url}: request for rows {lo}-{lo + n - 1} failed: "
                                  f"{type(err).__name__}: {err}") from None
        if reply.status_code != 200:
            raise ValueError(f"reward service {self.url}: HTTP {reply.status_code} for rows {lo}-{lo + n - 1}: "
                             f"{_short(reply.text)}")
        try:
            payload = json.loads(reply.text)
        except ValueError:
            raise ValueError(f"reward service {self.url}: the answer for rows {lo}-{lo + n - 1} is not JSON: "
                             f"{_short(reply.text)}") from None
        return check_service_scores(payload, n, lo, self.url, body["prompts"], body["responses"])

    def score_rows(self, prompts: list, responses: list, eos: list, fields: dict) -> torch.Tensor:
        """(N,) float32 scores: chunks of batch_size rows sent concurrently, each under the policy."""
        import httpx

        n = len(prompts)
        starts = list(range(0, n, self.batch_size))
        out = [0.0] * n
        with httpx.Client() as client, ThreadPoolExecutor(min(self.policy.concurrency, max(len(starts), 1))) as pool:
            def chunk(lo):
                hi = min(lo + self.batch_size, n)
                body = {"prompts": prompts[lo:hi], "responses": responses[lo:hi], "eos": eos[lo:hi],
                        "fields": {k: v[lo:hi] for k, v in fields.items()}}
                got = self.policy.run(lambda: self._post(client, body, lo, hi - lo), hi - lo,
                                      f"reward service {self.url} (rows {lo}-{hi - 1})")
                out[lo:hi] = got if got is not None else [0.0] * (hi - lo)

            for f in [pool.submit(chunk, lo) for lo in starts]:
                f.result()
        return torch.tensor(out, dtype=torch.float32)


class WeightedScorer:
    """sum_k weight_k * scorer_k(experience): several reward sources as one scorer. Sources with a
    `prefetch` start first, so remote requests overlap the local scoring and the trainer's forwards."""

    def __init__(self, parts: list[tuple[object, float]]):
        if not parts:
            raise ValueError("WeightedScorer needs at least one scorer")
        self.parts = list(parts)
        self.name = " + ".join(f"{w:g} x {getattr(s, 'name', type(s).__name__)}" for s, w in self.parts)

    @property
    def reward_model(self):
        """The in-process reward model among the parts, if any (FSDP shards it with the other frozen models)."""
        return next((s.reward_model for s, _ in self.parts if getattr(s, "reward_model", None) is not None), None)

    def prefetch(self, experience) -> None:
        for scorer, _ in self.parts:
            if hasattr(scorer, "prefetch"):
                scorer.prefetch(experience)

    def add_prompts(self, rows) -> None:
        """Hand the prompt rows to the parts that re-render conversations (a reward model of another family)."""
        for scorer, _ in self.parts:
            if hasattr(scorer, "add_prompts"):
                scorer.add_prompts(rows)

    def __call__(self, experience) -> torch.Tensor:
        from rlhfkit.rollout.scoring import check_scores

        total = None
        for scorer, weight in self.parts:
            s = check_scores(scorer(experience), experience.prompts, experience.responses,
                             getattr(scorer, "name", type(scorer).__name__))
            total = weight * s if total is None else total + weight * s
        return total

    def pop_metrics(self) -> dict:
        out: dict = {}
        for scorer, _ in self.parts:
            for k, v in (scorer.pop_metrics() if hasattr(scorer, "pop_metrics") else {}).items():
                out[k] = out.get(k, 0.0) + v
        return out


def scorer_metrics(scorer) -> dict:
    """The remote sources' counters since the last call ({} for purely in-process scorers)."""
    return scorer.pop_metrics() if hasattr(scorer, "pop_metrics") else {}
