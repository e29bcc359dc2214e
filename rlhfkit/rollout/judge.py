"""Judge rewards: an OpenAI-compatible chat-completions endpoint scores each response with a rubric.

One request per row (POST {url}/chat/completions, temperature 0), up to `concurrency` at once,
under the same timeout / retry / failure policy as the reward services (`RequestPolicy`). The
rubric template has the placeholders {prompt} and {response}; the judge's answer is read by
`parse_judge_score`: the LAST number in the answer, clamped to [1, 10], mapped to (x - 1) / 9 in
[0, 1]. An answer without a number is a failed request (retried, then the policy). The API key is
read from the environment variable named by `api_key_env` when the request is sent; it is never
logged, printed or saved.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from rlhfkit.rollout.remote import RequestPolicy, _Prefetching, _short

DEFAULT_RUBRIC = """You are grading the answer of an AI assistant to a user's request.

[Request]
{prompt}

[Answer]
{response}

Judge the answer's helpfulness, correctness and clarity. Think briefly if you need to, then end
with a line of the form "Score: N", where N is an integer from 1 (useless or wrong) to 10 (excellent).
"""

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_judge_score(text: str, low: float = 1.0, high: float = 10.0) -> float | None:
    """The last number in `text`, clamped to [low, high] and scaled to [0, 1]; None if there is none."""
    found = _NUMBER.findall(str(text))
    if not found:
        return None
    x = min(max(float(found[-1]), low), high)
    return (x - low) / (high - low)


def load_template(path: str | None) -> str:
    """The rubric in file `path` (it must contain {prompt} and {response}), or the built-in one."""
    if path is None:
        return DEFAULT_RUBRIC
    text = Path(path).read_text(encoding="utf-8")
    missing = [p for p in ("{prompt}", "{response}") if p not in text]
    if missing:
        raise ValueError(f"judge template {path}: add the placeholder(s) {', '.join(missing)}")
    return text


class JudgeScorer(_Prefetching):
    """Scores each (prompt, response) with a chat model behind an OpenAI-compatible API."""

    def __init__(self, url: str, model: str, template: str = DEFAULT_RUBRIC, api_key_env: str | None = None,
                 policy: RequestPolicy | None = None, max_tokens: int = 256):
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else f"{url}/chat/completions"
        self.model, self.template, self.api_key_env, self.max_tokens = model, template, api_key_env, max_tokens
        self.policy = policy or RequestPolicy()
        self.name = f"judge {model} at {self.url}"

    def _headers(self) -> dict:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _ask(self, client, prompt: str, response: str, row: int) -> float:
        content = self.template.replace("{prompt}", prompt).replace("{response}", response)
        body = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": content}]}
        try:
            reply = client.post(self.url, json=body, headers=self._headers(), timeout=self.policy.timeout)
        except Exception as err:
            raise ConnectionError(f"judge {self.url}: request for row {row} failed: {type(err).__name__}: {err}") \
                from None
        if reply.status_code != 200:
            raise ValueError(f"judge {self.url}: HTTP {reply.status_code} for row {row}: {_short(reply.text)}")
        try:
            answer = json.loads(reply.text)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise ValueError(f"judge {self.url}: the answer for row {row} is not a chat completion "
                             f"(choices[0].message.content): {_short(reply.text)}") from None
        score = parse_judge_score(answer)
        if score is None:
            raise ValueError(f"judge {self.url}: no number in its answer for row {row}: {_short(answer)}")
        return score

    def score_rows(self, prompts: list, responses: list, eos: list, fields: dict) -> torch.Tensor:
        """(N,) float32 scores in [0, 1]; a row the policy gives up on ("zero") scores 0."""
        import httpx

        n = len(prompts)
        out = [0.0] * n
        with httpx.Client() as client, ThreadPoolExecutor(min(self.policy.concurrency, max(n, 1))) as pool:
            def row(i):
                got = self.policy.run(lambda: self._ask(client, prompts[i], responses[i], i), 1,
                                      f"judge {self.url} (row {i})")
                out[i] = got if got is not None else 0.0

            for f in [pool.submit(row, i) for i in range(n)]:
                f.result()
        return torch.tensor(out, dtype=torch.float32)
