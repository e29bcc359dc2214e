import json
import re

import pytest

from rlhfkit.tasks import arithmetic as A
from rlhfkit.tasks import get_task
from tests.tasks.helpers import assert_no_unk, read_jsonl

SMALL = {"sft_train": 150, "sft_eval": 20, "prompts_train": 300, "prompts_eval": 50}
_Q = re.compile(r"^What is (\d{1,2})\+(\d{1,2})\? $")


@pytest.fixture(scope="module")
def task():
    return get_task("arithmetic")


@pytest.fixture(scope="module")
def written(task, tmp_path_factory):
    return task.write_data(tmp_path_factory.mktemp("arith"), seed=0, **SMALL)


def test_reward_exact_match_on_the_documented_examples(task):
    for ex in task.sample_responses():
        assert A.reward([ex["prompt"]], [ex["response"]], answer=[ex["answer"]]) == [ex["reward"]], ex["kind"]


@pytest.mark.parametrize("response, expected", [
    ("81", 1.0), ("81   ", 1.0), ("\n81\n", 1.0), (" 81<eos><pad><pad>", 1.0), ("81</s>", 1.0),
    ("the sum is 81", 1.0), ("80 no, 81", 1.0), ("81 then 80", 0.0), ("8 1", 0.0), ("81.5", 0.0),
    ("-81", 0.0), ("<eos>81", 0.0), ("", 0.0), ("   ", 0.0),
])
def test_reward_final_number_parsing(response, expected):
    assert A.reward(["What is 23+58? "], [response], answer=["81"]) == [expected]


def test_answers_may_be_ints_or_omitted():
    prompts = ["What is 23+58? ", "What is 9+0? ", "What is 99+99? "]
    responses = ["81", "9", "197"]
    assert A.reward(prompts, responses, answer=[81, 9, 198]) == [1.0, 1.0, 0.0]
    assert A.reward(prompts, responses) == [1.0, 1.0, 0.0]   # answers computed from the prompts
    with pytest.raises(ValueError, match="answer"):
        A.reward(["how are you? "], ["fine"])
    with pytest.raises(ValueError, match="field 'answer' has 1 values for 3 prompts"):
        A.reward(prompts, responses, answer=["81"])


def test_subtraction_and_negative_answers():
    assert A.answer_of("What is 5-23? ") == "-18"
    assert A.reward(["What is 5-23? "] * 3, ["-18", "18", "5-18"]) == [1.0, 0.0, 0.0]


def test_files_formats_sizes_and_correct_answers(task, written):
    for name, size in SMALL.items():
        rows = read_jsonl(written[name])
        assert len(rows) == size
        key = "response" if name.startswith("sft") else "answer"
        for row in rows:
            assert set(row) == {"prompt", key}
            a, b = map(int, _Q.match(row["prompt"]).groups())
            assert row[key] == str(a + b)
    assert json.loads(open(written["info"]).read())["sizes"] == SMALL


def test_no_question_is_in_two_files(written):
    seen = {}
    for name in SMALL:
        for row in read_jsonl(written[name]):
            assert row["prompt"] not in seen, (row["prompt"], name, seen.get(row["prompt"]))
            seen[row["prompt"]] = name


def test_determinism_and_stable_eval_prompts(task, tmp_path, written):
    again = task.write_data(tmp_path / "again", seed=0, **SMALL)
    other_seed = task.write_data(tmp_path / "seed1", seed=1, **SMALL)
    bigger_sft = task.write_data(tmp_path / "bigger", seed=0, **{**SMALL, "sft_train": 400})
    for name in SMALL:
        assert open(again[name], "rb").read() == open(written[name], "rb").read()
        assert open(other_seed[name], "rb").read() != open(written[name], "rb").read()
    for name in ("prompts_eval", "sft_eval"):
        assert open(bigger_sft[name], "rb").read() == open(written[name], "rb").read()


def test_operands_cover_one_and_two_digits(task, tmp_path):
    rows = read_jsonl(task.write_data(tmp_path, seed=0, prompts_train=3000)["prompts_train"])
    operands = [int(x) for r in rows for x in _Q.match(r["prompt"]).groups()]
    assert min(operands) == 0 and max(operands) == 99
    assert 0.05 < sum(x < 10 for x in operands) / len(operands) < 0.15   # ~10% one-digit


def test_options_and_errors(tmp_path):
    small = get_task("arithmetic", max_digits=1, ops="+-")
    paths = small.write_data(tmp_path, seed=0, sft_train=50, sft_eval=10, prompts_train=100, prompts_eval=40)
    rows = read_jsonl(paths["prompts_train"])
    assert any("-" in r["prompt"] for r in rows) and any("+" in r["prompt"] for r in rows)
    assert all(A.reward([r["prompt"]], [r["answer"]]) == [1.0] for r in rows)
    with pytest.raises(ValueError, match="only 200 distinct questions"):
        small.write_data(tmp_path, prompts_train=1000)
    with pytest.raises(ValueError, match="ops"):
        get_task("arithmetic", ops="/")
    with pytest.raises(ValueError, match="max_digits"):
        get_task("arithmetic", max_digits=0)


def test_corpus_covers_every_character(task, written):
    tok = assert_no_unk(task, written)
    assert len(tok) < 40
    text = "What is 23+58? 81"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.parametrize("value,expected", [(81, "about 80"), (85, "about 90"), (80, "about 80"), (4, "about 0"),
                                            (195, "about 200"), (-14, "about -10"), (-15, "about -10")])
def test_estimate_rounds_to_the_nearest_ten(value, expected):
    assert A.estimate_of(value) == expected


def test_sloppy_annotator_estimates(tmp_path):
    # A share of the demonstrations are estimates; they score 0 unless the sum is a multiple of ten.
    task = get_task("arithmetic", estimate_fraction=0.5)
    paths = task.write_data(tmp_path, seed=3, sft_train=400, sft_eval=40, prompts_train=50, prompts_eval=50)
    rows = read_jsonl(paths["sft_train"])
    estimates = [r for r in rows if r["response"].startswith("about ")]
    assert 0.4 < len(estimates) / len(rows) < 0.6
    for r in rows:
        a, b = map(int, _Q.match(r["prompt"]).groups())
        expected = A.estimate_of(a + b) if r in estimates else str(a + b)
        assert r["response"] == expected
        assert A.reward([r["prompt"]], [r["response"]]) == [float(r not in estimates or (a + b) % 10 == 0)]
    # The prompts (and the held-out questions) are those of the plain task with the same seed.
    plain = get_task("arithmetic").write_data(tmp_path / "plain", seed=3, sft_train=400, sft_eval=40,
                                              prompts_train=50, prompts_eval=50)
    assert read_jsonl(plain["prompts_eval"]) == read_jsonl(paths["prompts_eval"])
    assert [r["prompt"] for r in read_jsonl(plain["sft_train"])] == [r["prompt"] for r in rows]
    assert_no_unk(task, paths)
    with pytest.raises(ValueError, match="estimate_fraction"):
        get_task("arithmetic", estimate_fraction=1.0)
