"""Bundled synthetic tasks for the quickstart, each with a hidden gold reward.

A task is a plain object with:
    name, tokenizer_level ("word" | "char"), default_sizes
    corpus() -> list[str]                       text a tiny tokenizer must cover
    write_data(out_dir, seed=0, **sizes) -> {name: path}    JSONL files for sft / rm / rl
    gold(prompts, responses, **fields) -> list[float]       the hidden true reward
    describe() -> str, sample_responses() -> list[dict]
and its module has `reward(prompts, responses, **fields)` for the rl command
(`rlhfkit.tasks.reviews:reward`, `rlhfkit.tasks.arithmetic:reward`).

Pure Python: importing this package loads neither torch nor transformers.
"""

from __future__ import annotations

from rlhfkit.tasks.arithmetic import ArithmeticTask
from rlhfkit.tasks.reviews import ReviewsTask

TASKS = {"reviews": ReviewsTask, "arithmetic": ArithmeticTask}
DEFAULT_TASK = "reviews"


def get_task(name: str = DEFAULT_TASK, **options):
    """A new task object by name; options go to its constructor (e.g. agreement=0.8 for
    reviews, max_digits=1 for arithmetic)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the bundled tasks are {sorted(TASKS)}")
    return TASKS[name](**options)


__all__ = ["TASKS", "DEFAULT_TASK", "get_task", "ReviewsTask", "ArithmeticTask"]
