import importlib
import subprocess
import sys

import pytest

from rlhfkit.tasks import DEFAULT_TASK, TASKS, get_task


def test_get_task_by_name_and_clear_error():
    assert DEFAULT_TASK == "reviews"
    for name in TASKS:
        task = get_task(name)
        assert task.name == name and task.tokenizer_level in ("word", "char")
        assert task.describe().strip() and task.sample_responses()
    with pytest.raises(ValueError, match=r"unknown task 'review'.*\['arithmetic', 'reviews'\]"):
        get_task("review")


@pytest.mark.parametrize("spec", ["rlhfkit.tasks.reviews:reward", "rlhfkit.tasks.arithmetic:reward"])
def test_module_level_reward_matches_the_task_gold(spec):
    module, attr = spec.split(":")
    reward = getattr(importlib.import_module(module), attr)
    task = get_task(module.rsplit(".", 1)[1])
    examples = task.sample_responses()
    prompts, responses = [e["prompt"] for e in examples], [e["response"] for e in examples]
    fields = {"answer": [e["answer"] for e in examples]} if "answer" in examples[0] else {}
    scores = reward(prompts, responses, **fields)
    assert scores == task.gold(prompts, responses, **fields)
    assert len(set(scores)) > 1 and all(isinstance(s, float) for s in scores)


def test_importing_tasks_stays_light():
    code = "import sys, rlhfkit.tasks; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
