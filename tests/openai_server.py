"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for judge tests (a real HTTP server).

Modes: "first" always answers Verdict: A; "normal" prefers the response with more "good" words
(tie when equal); "garbage" answers text without a verdict; "slow" does not answer until the
test ends; "flaky" answers HTTP 503 to every second request; "broken" answers JSON that is not a
chat completion. Responses are read back from the test template's <A>...</A> and <B>...</B>.
"""

from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEMPLATE = ("Question: {prompt}\n<A>{response_a}</A>\n<B>{response_b}</B>\n"
            "End with 'Verdict: A', 'Verdict: B' or 'Verdict: tie'.")


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        srv = self.server
        with srv.lock:
            srv.requests += 1
            number = srv.requests
            srv.auth.append(self.headers.get("Authorization"))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": "not found"})
        if srv.mode == "slow":
            srv.release.wait(timeout=10)
            return self._send(200, _completion("Verdict: A"))
        if srv.mode == "flaky" and number % 2 == 1:
            return self._send(503, {"error": "busy"})
        if srv.mode == "broken":
            return self._send(200, {"result": "A"})
        text = body["messages"][-1]["content"]
        if srv.mode == "first":
            answer = "Looking at both... Verdict: A"
        elif srv.mode == "garbage":
            answer = "I like turtles. Both are nice, maybe."
        else:
            a = re.search(r"<A>(.*?)</A>", text, re.S).group(1).split().count("good")
            b = re.search(r"<B>(.*?)</B>", text, re.S).group(1).split().count("good")
            answer = "Verdict: " + ("A" if a > b else "B" if b > a else "tie")
        self._send(200, _completion(answer))

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass


def _completion(text):
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
                                                                 "message": {"role": "assistant", "content": text}}]}


@contextmanager
def judge_server(mode: str):
    """Serve on a free port of 127.0.0.1; yields the server (its .url is the /v1 base, .requests counts)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.mode, srv.requests, srv.auth, srv.lock, srv.release = mode, 0, [], threading.Lock(), threading.Event()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join()
