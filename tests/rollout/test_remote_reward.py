"""Rewards served elsewhere, on loopback with real servers: `serve-reward` gives the in-process scores;
`RemoteScorer` and `JudgeScorer` follow the timeout / retry / failure policy and name the URL and row."""

from __future__ import annotations

import asyncio
import types

import pytest
import torch

from tests.remote_servers import CliServer, ThreadServer, fake_judge, fake_service

PROMPTS = ["what is 1 + 2 ?", "the cat sat", "a dog ran to the park", "what is 4 + 5 ?"]
FAST = dict(backoff=0.01, max_backoff=0.02)  # retries without waiting in tests


def policy(**kw):
    from rlhfkit.rollout.remote import RequestPolicy

    return RequestPolicy(**{**FAST, **kw})


def experience(tiny_model, tiny_tokenizer, scorer=None, n=2):
    from rlhfkit.rollout import GenerationSettings, make_experience

    torch.manual_seed(0)
    settings = GenerationSettings(max_new_tokens=5, n=n)
    return make_experience(tiny_model, tiny_tokenizer, PROMPTS, settings, scorer=scorer,
                           fields={"answer": ["3", "x", "y", "9"]})


def test_served_reward_model_equals_in_process(tiny_model, tiny_tokenizer, tiny_reward_model_dir):
    from rlhfkit.models import load_reward_model
    from rlhfkit.rollout import RewardModelScorer
    from rlhfkit.rollout.remote import RemoteScorer

    local = RewardModelScorer(load_reward_model(tiny_reward_model_dir), tiny_tokenizer)
    exp = experience(tiny_model, tiny_tokenizer, scorer=local)  # scored on the experience's own ids
    texts = RewardModelScorer(local.reward_model, tiny_tokenizer)
    texts.reuse_ids = False  # the same reward model on the re-tokenized texts, in this process
    # small requests and a small token budget: the server batches and splits them its own way
    with CliServer(["--reward-model", str(tiny_reward_model_dir), "--device", "cpu", "--max-batch-tokens", "40",
                    "--max-wait-ms", "20"]) as server:
        served = RemoteScorer(server.url, batch_size=3, policy=policy(concurrency=3))(exp)
    # float32 rounding apart: the server's forwards have other shapes (its own batches and padding)
    torch.testing.assert_close(served, texts(exp), rtol=0, atol=1e-6)
    assert served.std() > 0  # the rows really differ
    # Where the text gives back the sampled ids, that is also the score of the ids themselves. (The random
    # tiny policy samples pad / unk tokens mid-response, which the decoded text cannot hold.)
    ids, mask, _, _ = texts._retokenize(exp)
    same = [i for i in range(len(exp.prompts))
            if exp.input_ids[i][exp.attention_mask[i].bool()].tolist() == ids[i][mask[i].bool()].tolist()]
    assert len(same) >= len(exp.prompts) // 2
    torch.testing.assert_close(served[same], exp.scores[same], rtol=0, atol=1e-6)


def _app(spec, budget=8192, wait_ms=5.0):
    from rlhfkit.serve import FunctionBackend, make_app

    return make_app(FunctionBackend(spec), budget, wait_ms)


REWARD = """
calls = []
def scored(prompts, responses, answer=None, **fields):
    calls.append(len(responses))
    return [len(r) * 0.25 + (1.0 if a in r else 0.0) + 0.01 * len(p) for p, r, a in zip(prompts, responses, answer)]
"""


def test_served_function_equals_in_process_and_respects_the_budget(tiny_model, tiny_tokenizer, tmp_path):
    from rlhfkit.rollout import FunctionScorer, load_reward_function
    from rlhfkit.rollout.remote import RemoteScorer
    from rlhfkit.serve import FunctionBackend, make_app

    (tmp_path / "rw.py").write_text(REWARD)
    spec = f"{tmp_path / 'rw.py'}:scored"
    exp = experience(tiny_model, tiny_tokenizer, scorer=FunctionScorer(load_reward_function(spec)))
    backend = FunctionBackend(spec)
    calls = backend.scorer.fn.__globals__["calls"]  # the served copy's record of its batch sizes
    with ThreadServer(make_app(backend, max_batch_tokens=3, max_wait_ms=50)) as server:
        served = RemoteScorer(server.url, batch_size=8, policy=policy())(exp)
    assert torch.equal(served, exp.scores)
    assert calls == [3, 3, 2]  # the request's 8 rows in sub-batches under the budget (3 rows for a function)


def test_batcher_merges_concurrent_requests_and_answers_each_its_own(tmp_path):
    from rlhfkit.serve import Batcher, FunctionBackend

    (tmp_path / "rw.py").write_text(REWARD)
    backend = FunctionBackend(f"{tmp_path / 'rw.py'}:scored")
    calls = backend.scorer.fn.__globals__["calls"]
    # the budget (6 rows) is reached by the three requests: the batch closes without waiting out max_wait_ms
    batcher = Batcher(backend, max_batch_tokens=6, max_wait_ms=60_000)

    async def main():
        worker = asyncio.create_task(batcher.run())
        await asyncio.sleep(0)  # the worker creates its queue
        requests = [([f"p{k}", f"q{k}"], ["a" * k, "b" * (k + 1)], [False, False], {"answer": ["a", "b"]})
                    for k in (1, 2, 3)]
        try:
            return requests, await asyncio.gather(*(batcher.score(*r) for r in requests))
        finally:
            worker.cancel()

    requests, answers = asyncio.run(main())
    assert calls == [6]  # one call for the three requests
    for (prompts, responses, _, fields), scores in zip(requests, answers):
        assert scores == backend.score(prompts, responses, None, fields)
    batcher.pool.shutdown()


def test_prefetch_starts_before_the_reference_forward(tiny_model, tiny_tokenizer):
    import copy

    from rlhfkit.rollout import GenerationSettings, make_experience

    log = []

    class Spy:
        name = "spy"

        def prefetch(self, rows):
            log.append(("prefetch", len(rows.responses)))

        def __call__(self, exp):
            log.append(("score", len(exp.responses)))
            return torch.zeros(len(exp.responses))

    reference = copy.deepcopy(tiny_model)
    reference.register_forward_hook(lambda *args: log.append(("reference", None)))
    make_experience(tiny_model, tiny_tokenizer, PROMPTS[:2], GenerationSettings(max_new_tokens=3), scorer=Spy(),
                    reference=reference)
    assert log == [("prefetch", 2), ("reference", None), ("score", 2)]


def test_sub_batches_hand_computed():
    from rlhfkit.serve import sub_batches

    # budget 10: [4, 4] costs 2 x 4 = 8; adding 3 keeps 3 x 4 = 12 > 10 -> split; a row over budget stands alone
    assert sub_batches([4, 4, 3, 2, 12, 1], 10) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    assert sub_batches([5, 5, 5], 10) == [(0, 2), (2, 3)]  # exactly the budget still fits
    assert sub_batches([], 10) == []


def test_service_rejects_a_malformed_request():
    import httpx

    with ThreadServer(_app("exact_match")) as server:
        reply = httpx.post(f"{server.url}/score", json={"prompts": ["a"], "responses": []}, timeout=10)
        assert reply.status_code == 400 and "same length" in reply.json()["error"]
        reply = httpx.post(f"{server.url}/score", json={"prompts": ["a"], "responses": ["4"]}, timeout=10)
        assert reply.status_code == 500 and "answer" in reply.json()["error"]  # exact_match needs `answer`
        ok = httpx.post(f"{server.url}/score", json={"prompts": ["a", "b"], "responses": ["it is 4", "5"],
                                                     "fields": {"answer": ["4", "4"]}}, timeout=10)
        assert ok.json() == {"scores": [1.0, 0.0]}
        assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"


def _rows(n=5):
    import types

    return types.SimpleNamespace(prompts=[f"p{i}" for i in range(n)], responses=[f"r{i}" for i in range(n)],
                                 eos=torch.ones(n, dtype=torch.bool), stopped=None, fields={})


@pytest.mark.parametrize("answer,message", [
    (lambda body: {"scores": [1.0] * (len(body["prompts"]) - 1)}, "scores for 3 rows (0-2)"),
    (lambda body: (200, '{"scores": [0.5, NaN, 0.5]}'), "for row 1 is not a finite number"),
    (lambda body: (200, "<html>oops</html>"), "is not JSON"),
    (lambda body: (500, '{"error": "model exploded"}'), "HTTP 500 for rows 0-2"),
    (lambda body: {"score": [1, 2, 3]}, "no list `scores`"),
    (lambda body: {"scores": [1.0, "2", 3.0]}, "for row 1 is not a finite number"),
])
def test_malformed_answers_name_the_url_and_row(answer, message):
    from rlhfkit.rollout.remote import RemoteScorer, RewardServiceError

    app = fake_service(answer)
    with ThreadServer(app) as server:
        scorer = RemoteScorer(server.url, batch_size=3, policy=policy(retries=1))
        with pytest.raises(RewardServiceError) as info:
            scorer(_rows(3))
    text = str(info.value)
    assert server.url in text and message in text, text
    assert app.state.calls == 2  # one try and one retry
    assert scorer.pop_metrics() == {"reward/remote_failures": 2.0, "reward/remote_retries": 1.0,
                                    "reward/remote_zeroed": 0.0}


def test_a_server_slower_than_the_timeout_triggers_the_policy():
    from rlhfkit.rollout.remote import RemoteScorer, RewardServiceError

    async def slow(body):
        await asyncio.sleep(3)
        return {"scores": [1.0] * len(body["prompts"])}

    with ThreadServer(fake_service(slow)) as server:
        zero = RemoteScorer(server.url, batch_size=2, policy=policy(timeout=0.2, retries=1, on_error="zero"))
        assert torch.equal(zero(_rows(5)), torch.zeros(5))
        # 3 chunks (2 + 2 + 1 rows), each tried twice
        assert zero.pop_metrics() == {"reward/remote_failures": 6.0, "reward/remote_retries": 3.0,
                                      "reward/remote_zeroed": 5.0}
        stop = RemoteScorer(server.url, batch_size=5, policy=policy(timeout=0.2, retries=0))
        with pytest.raises(RewardServiceError, match=r"rows 0-4.*(Timeout|timed out)"):
            stop(_rows(5))


def test_retry_policy_waits_for_the_service():
    from rlhfkit.rollout.remote import RemoteScorer

    state = {"calls": 0}

    def flaky(body):
        state["calls"] += 1
        return (503, "warming up") if state["calls"] <= 4 else {"scores": [2.0] * len(body["prompts"])}

    with ThreadServer(fake_service(flaky)) as server:
        scorer = RemoteScorer(server.url, batch_size=8, policy=policy(retries=0, on_error="retry"))
        assert torch.equal(scorer(_rows(3)), torch.full((3,), 2.0))
    assert scorer.pop_metrics()["reward/remote_retries"] == 4.0


def test_a_dead_service_is_an_error_naming_the_url():
    from rlhfkit.rollout.remote import RemoteScorer, RewardServiceError
    from tests.remote_servers import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    with pytest.raises(RewardServiceError, match=r"127\.0\.0\.1.*rows 0-1.*failed after 3 attempt"):
        RemoteScorer(url, policy=policy(retries=2))(_rows(2))


def test_prefetch_sends_each_row_once_during_make_experience(tiny_model, tiny_tokenizer):
    from rlhfkit.rollout.remote import RemoteScorer

    app = fake_service(lambda body: {"scores": [float(len(r)) for r in body["responses"]]})
    with ThreadServer(app) as server:
        scorer = RemoteScorer(server.url, batch_size=4, policy=policy())
        exp = experience(tiny_model, tiny_tokenizer, scorer=scorer)
    assert app.state.calls == 2  # 8 rows in 2 requests, sent once (prefetched, then collected)
    assert exp.scores.tolist() == [float(len(r)) for r in exp.responses]


def test_weighted_sum_of_local_and_served(tiny_model, tiny_tokenizer, tmp_path):
    from rlhfkit.rollout import FunctionScorer, load_reward_function
    from rlhfkit.rollout.sources import combine_scorers

    (tmp_path / "rw.py").write_text(REWARD)
    local = FunctionScorer(load_reward_function(f"{tmp_path / 'rw.py'}:scored"))
    app = fake_service(lambda body: {"scores": [float(len(r)) for r in body["responses"]]})
    with ThreadServer(app) as a, ThreadServer(app) as b:
        scorer = combine_scorers(local, urls=[f"{a.url}:0.5", f"{b.url}/:-2"], retries=0)
        exp = experience(tiny_model, tiny_tokenizer, scorer=scorer)
    lengths = torch.tensor([float(len(r)) for r in exp.responses])
    assert torch.allclose(exp.scores, local(exp) + 0.5 * lengths - 2 * lengths)
    assert scorer.pop_metrics()["reward/remote_failures"] == 0.0
    assert scorer.reward_model is None  # no in-process reward model to shard under FSDP
    marker = torch.nn.Linear(1, 1)
    assert combine_scorers(types.SimpleNamespace(reward_model=marker), urls=["http://h:1"]).reward_model is marker


def test_with_remote_rewards_reads_the_config():
    from rlhfkit.rollout.judge import JudgeScorer
    from rlhfkit.rollout.remote import RemoteScorer, WeightedScorer
    from rlhfkit.rollout.sources import with_remote_rewards

    local = object()
    assert with_remote_rewards(types.SimpleNamespace(), local) is local  # a config without reward_* fields
    assert with_remote_rewards(types.SimpleNamespace(reward_url=()), None) is None
    one = with_remote_rewards(types.SimpleNamespace(reward_url=("http://h:1",), reward_timeout=5.0, reward_retries=1))
    assert isinstance(one, RemoteScorer) and one.policy.timeout == 5.0 and one.policy.retries == 1
    both = with_remote_rewards(types.SimpleNamespace(reward_url=("http://h:1:0.5",), reward_judge_url="http://j/v1",
                                                     reward_judge_model="m", reward_judge_weight=2.0), local)
    assert isinstance(both, WeightedScorer)
    assert [(type(s).__name__, w) for s, w in both.parts] == [("object", 1.0), ("RemoteScorer", 0.5),
                                                               ("JudgeScorer", 2.0)]
    assert isinstance(both.parts[2][0], JudgeScorer) and both.parts[2][0].url == "http://j/v1/chat/completions"


def test_parse_reward_url():
    from rlhfkit.rollout.remote import parse_reward_url

    assert parse_reward_url("http://127.0.0.1:8000") == ("http://127.0.0.1:8000", 1.0)
    assert parse_reward_url("http://127.0.0.1:8000:0.5") == ("http://127.0.0.1:8000", 0.5)
    assert parse_reward_url("https://rm.example/v2/:2") == ("https://rm.example/v2", 2.0)
    assert parse_reward_url("http://host:-1") == ("http://host:-1", 1.0)  # no port or path before it: not a weight
    with pytest.raises(ValueError, match="expected http"):
        parse_reward_url("localhost:8000")


# ---------------------------------------------------------------- judge

def test_parse_judge_score_rule():
    from rlhfkit.rollout.judge import parse_judge_score

    assert parse_judge_score("Good answer.\nScore: 7") == pytest.approx(6 / 9)
    assert parse_judge_score("3 issues. Score: 12") == 1.0  # the last number, clamped to 10
    assert parse_judge_score("Score: 0") == 0.0  # clamped to 1
    assert parse_judge_score("Score: 5.5") == pytest.approx(4.5 / 9)
    assert parse_judge_score("I cannot grade this.") is None


def test_judge_scores_with_rubric_key_and_policy(monkeypatch, tmp_path):
    from rlhfkit.rollout.judge import JudgeScorer, load_template

    secret = "sk-test-not-a-real-key-1234"
    monkeypatch.setenv("RLHFKIT_TEST_JUDGE_KEY", secret)
    (tmp_path / "rubric.txt").write_text("Q: {prompt}\nA: {response}\nRate 1-10.")

    def answer(content):
        return "no idea" if "r3" in content else f"Score: {1 + int(content.split('A: r')[1][0])}"

    app = fake_judge(answer)
    with ThreadServer(app) as server:
        judge = JudgeScorer(f"{server.url}/v1", "tiny-judge", template=load_template(str(tmp_path / "rubric.txt")),
                            api_key_env="RLHFKIT_TEST_JUDGE_KEY", policy=policy(retries=1, on_error="zero"))
        scores = judge(_rows(5))
    # row i -> "Score: i + 1" -> i / 9; row 3 has no number: zeroed after 1 retry
    assert torch.allclose(scores, torch.tensor([0.0, 1 / 9, 2 / 9, 0.0, 4 / 9]))
    assert judge.pop_metrics() == {"reward/remote_failures": 2.0, "reward/remote_retries": 1.0,
                                   "reward/remote_zeroed": 1.0}
    model, auth, content = app.state.seen[0]
    assert model == "tiny-judge" and auth == f"Bearer {secret}" and content.startswith("Q: p")
    with pytest.raises(ValueError, match="response"):
        (tmp_path / "bad.txt").write_text("{prompt} only")
        load_template(str(tmp_path / "bad.txt"))


def test_judge_errors_never_show_the_key(monkeypatch, capsys):
    from rlhfkit.rollout.judge import JudgeScorer
    from rlhfkit.rollout.remote import RewardServiceError

    secret = "sk-test-never-printed-5678"
    monkeypatch.setenv("RLHFKIT_TEST_JUDGE_KEY", secret)
    app = fake_service(lambda body: {"scores": []})  # no chat endpoint: 404 for the judge
    with ThreadServer(app) as server:
        judge = JudgeScorer(server.url, "m", api_key_env="RLHFKIT_TEST_JUDGE_KEY", policy=policy(retries=1))
        with pytest.raises(RewardServiceError) as info:
            judge(_rows(1))
    text = str(info.value) + capsys.readouterr().err
    assert "HTTP 404 for row 0" in text and server.url in text
    assert secret not in text
