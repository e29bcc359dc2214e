"""Reward functions: loading by spec, the exact-match rule, and errors that name the sample."""

import pytest
import torch

from rlhfkit.rollout import FunctionScorer, exact_match, extract_final_answer, load_reward_function


@pytest.mark.parametrize("text, expected", [
    ("so 3 + 4 = 7", "7"),
    ("we get 1,234 apples and then 12.5", "12.5"),
    ("the total is 18.\n#### 72", "72"),
    ("first 3 then \\boxed{\\frac{1}{2}} done 9", "\\frac{1}{2}"),
    ("no numbers here ", "no numbers here"),
    ("it is -4", "-4"),
    ("2 steps. The answer is 72 apples, not 3", "72"),
    ("Answer: Paris.\nbye", "Paris"),
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_exact_match_hand_examples():
    responses = ["the answer is 72", "72.0", "I think 71", "#### 1,000", "answer: paris", "3 then 5"]
    answers = ["72", "72", "72", "1000", "Paris", "3"]
    assert exact_match([""] * 6, responses, answer=answers) == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    # A GSM8K-style gold solution is reduced to its final answer too.
    assert exact_match(["q"], ["so 18"], answer=["18 - 2 = 16 ... #### 18"]) == [1.0]
    with pytest.raises(ValueError, match="needs an 'answer' field"):
        exact_match(["q"], ["1"])


def test_load_builtin_file_and_module(tmp_path, monkeypatch):
    assert load_reward_function("exact_match") is exact_match
    (tmp_path / "my_reward.py").write_text("def length(prompts, responses, **fields):\n"
                                           "    return [float(len(r)) for r in responses]\n")
    from_file = load_reward_function(f"{tmp_path / 'my_reward.py'}:length")
    assert from_file(["p"], ["abc"]) == [3.0]
    monkeypatch.syspath_prepend(str(tmp_path))
    from_module = load_reward_function("my_reward:length")
    assert from_module(["p"], ["ab"]) == [2.0]


@pytest.mark.parametrize("spec, error, message", [
    ("", ValueError, "expected 'path/to/file.py:function'"),
    ("no_colon_here", ValueError, "built-in name"),
    ("{tmp}/missing.py:fn", FileNotFoundError, "missing.py does not exist"),
    ("{tmp}/rewards.py:nope", ValueError, r"defines no 'nope' \(callables there: good\)"),
    ("{tmp}/rewards.py:CONSTANT", TypeError, "is a int, not a function"),
    ("{tmp}/rewards.py:", ValueError, "expected"),
    ("surely_not_a_module_xyz:fn", ValueError, "no module named 'surely_not_a_module_xyz'"),
])
def test_load_errors_say_what_is_wrong(tmp_path, spec, error, message):
    (tmp_path / "rewards.py").write_text("CONSTANT = 3\n\ndef good(prompts, responses, **fields):\n"
                                         "    return [1.0] * len(responses)\n")
    with pytest.raises(error, match=message):
        load_reward_function(spec.format(tmp=tmp_path))


def test_broken_reward_file_names_the_file(tmp_path):
    (tmp_path / "broken.py").write_text("def f(:\n")
    with pytest.raises(SyntaxError) as info:
        load_reward_function(f"{tmp_path / 'broken.py'}:f")
    assert any("broken.py" in note for note in getattr(info.value, "__notes__", []))


def test_scores_are_checked_and_errors_name_the_sample():
    prompts, responses = ["p0", "p1 long prompt", "p2"], ["r0", "r1", "r2"]

    def nan_at_1(prompts, responses):
        return [0.0, float("nan"), 1.0]

    with pytest.raises(ValueError, match=r"nan_at_1 gave a non-finite score \(nan\) for sample 1 .*'p1 long prompt'"):
        FunctionScorer(nan_at_1).score_texts(prompts, responses)
    with pytest.raises(ValueError, match="returned 2 scores for 3 responses"):
        FunctionScorer(lambda p, r: [1.0, 2.0], name="short").score_texts(prompts, responses)
    with pytest.raises(ValueError, match="one float per response"):
        FunctionScorer(lambda p, r: ["a", "b", "c"]).score_texts(prompts, responses)
    with pytest.raises(ValueError, match="non-finite"):
        FunctionScorer(lambda p, r: torch.tensor([1.0, float("inf"), 0.0])).score_texts(prompts, responses)

    def raises(prompts, responses):
        raise KeyError("label")

    with pytest.raises(KeyError) as info:
        FunctionScorer(raises).score_texts(prompts, responses)
    assert "reward function" in info.value.__notes__[0] and "raises" in info.value.__notes__[0]

    good = FunctionScorer(lambda p, r, answer: [float(a == "x") for a in answer])
    out = good.score_texts(prompts, responses, answer=["x", "y", "x"])
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 0.0, 1.0]
