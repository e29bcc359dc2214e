"""Real HTTP servers on 127.0.0.1 for the remote-reward tests: started and stopped by the tests, every wait bounded.

- `ThreadServer(app)`: uvicorn serving a FastAPI app in a thread of the test process.
- `CliServer(args)`: `python -m rlhfkit serve-reward ...` as a subprocess.
- `fake_service(handler)`: a reward service whose /score answer is `handler(body)` (a dict, or a
  (status, text) pair sent as it is): wrong counts, NaN, non-JSON, 500s, slow answers.
- `fake_judge(answer)`: an OpenAI-compatible /v1/chat/completions whose reply is `answer(prompt text)`.
"""


import inspect
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, seconds: float, alive=lambda: True) -> None:
    """Poll GET url/health until it answers 200; at most `seconds` (bounded), failing early if not alive()."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"server for {url} exited before it was healthy")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url}/health did not answer within {seconds} s")


class ThreadServer:
    """uvicorn in a daemon thread on a free port of 127.0.0.1; a context manager."""

    def __init__(self, app, port=None):
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        if not self.server.started:
            raise TimeoutError(f"uvicorn did not start on {self.url}")
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __exit__(self, *exc):
        self.stop()


class CliServer:
    """`rlhfkit serve-reward ARGS --port PORT` in a subprocess; a context manager."""

    def __init__(self, args, port=None, env=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args, self.env = args, {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", "serve-reward", *self.args, "--host",
                                      "127.0.0.1", "--port", str(self.port)], env=self.env, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_healthy(self.url, 120, alive=lambda: self.proc.poll() is None)
        except Exception:
            self.stop()
            raise RuntimeError(f"serve-reward did not start: {self.output()}") from None
        return self

    def output(self) -> str:
        return self.proc.stdout.read() if self.proc.poll() is not None else ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def __exit__(self, *exc):
        self.stop()


def fake_service(handler):
    """A FastAPI app with /health and a /score that answers handler(body)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response

    app = FastAPI()
    app.state.calls = 0

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/score")
    async def score(request: Request):
        app.state.calls += 1
        out = handler(await request.json())
        if inspect.isawaitable(out):  # an async handler, e.g. one that sleeps past the client's timeout
            out = await out
        if isinstance(out, tuple):
            return Response(content=out[1], status_code=out[0], media_type="application/json")
        return JSONResponse(out)

    return app


def fake_judge(answer):
    """An OpenAI-compatible chat-completions app; `app.state.seen` keeps (model, auth header, content)."""
    from fastapi import FastAPI, Request

    app = FastAPI()
    app.state.seen = []

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        content = body["messages"][-1]["content"]
        app.state.seen.append((body["model"], request.headers.get("authorization"), content))
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer(content)}}]}

    return app
