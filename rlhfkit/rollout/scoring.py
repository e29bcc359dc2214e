"""Scorers: one number per response, behind one interface `scorer(experience) -> (N,) float32`.

Sources: a reward model (`RewardModelScorer`, in `reward_model.py`, re-exported here), a Python function given as
`path/to/file.py:function` or `module:function` (`FunctionScorer`, `load_reward_function`), or a
built-in rule such as `exact_match`. Any non-finite or missing score is an error naming the sample.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import re
from collections.abc import Callable
from pathlib import Path

import torch

from rlhfkit.rollout.reward_model import RewardModelScorer, load_reward_scorer

__all__ = ["BUILTIN_REWARDS", "FunctionScorer", "RewardModelScorer", "check_scores", "exact_match",
           "extract_final_answer", "load_reward_function", "load_reward_scorer"]


def _short(text, limit: int = 200) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def check_scores(scores, prompts: list[str], responses: list[str], name: str) -> torch.Tensor:
    """`scores` as a (N,) float32 tensor, or a ValueError naming the scorer, the sample and its prompt.

    scores: a (N,) tensor or a sequence of N numbers, N = len(prompts).
    """
    n = len(prompts)
    if torch.is_tensor(scores):
        out = scores.detach().float().cpu()
    else:
        try:
            out = torch.tensor([float(s) for s in scores], dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"reward {name} must return one float per response (a list of {n} numbers); "
                             f"got {type(scores).__name__}: {_short(scores)} ({err})") from None
    if out.shape != (n,):
        raise ValueError(f"reward {name} returned {tuple(out.shape) if out.dim() != 1 else len(out)} scores "
                         f"for {n} responses; return exactly one float per response, in order")
    bad = (~torch.isfinite(out)).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise ValueError(f"reward {name} gave a non-finite score ({out[i].item()}) for sample {i} "
                         f"({len(bad)} such samples in all): prompt {_short(prompts[i])}, "
                         f"response {_short(responses[i])}")
    return out


class FunctionScorer:
    """Scores with a plain function `fn(prompts, responses, **fields) -> list[float]` (one per response)."""

    def __init__(self, fn: Callable, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"FunctionScorer needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", repr(fn))

    def score_texts(self, prompts: list[str], responses: list[str], **fields) -> torch.Tensor:
        """(N,) float32 scores for N prompt/response texts; fields hold N values each."""
        try:
            raw = self.fn(list(prompts), list(responses), **fields)
        except Exception as err:
            err.add_note(f"(raised by reward function {self.name} on a batch of {len(prompts)} responses)")
            raise
        return check_scores(raw, prompts, responses, self.name)

    def __call__(self, experience) -> torch.Tensor:
        return self.score_texts(experience.prompts, experience.responses, **experience.fields)


# ---------------------------------------------------------------- reward functions

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")
_ANSWER_MARKER = re.compile(r"answer\s*(?:is|:)", re.IGNORECASE)


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _first_number_or_text(tail: str) -> str:
    """The first number in `tail`, else its first non-empty line without a final period."""
    number = _NUMBER.search(tail)
    if number:
        return number.group(0)
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[0].rstrip(".") if lines else ""


def extract_final_answer(text: str) -> str:
    """The final answer of a response, by the first rule that applies: after the last "####" (GSM8K);
    the last \\boxed{} (MATH); after the last "answer is" / "answer:"; the last number; the whole
    text stripped. After a marker, the first number there, else the rest of that line."""
    text = str(text)
    if "####" in text:
        return _first_number_or_text(text.rsplit("####", 1)[1])
    boxed = _boxed(text)
    if boxed is not None:
        return boxed.strip()
    marker = list(_ANSWER_MARKER.finditer(text))
    if marker:
        return _first_number_or_text(text[marker[-1].end():])
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else text.strip()


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip().rstrip("."))
    except ValueError:
        return None


def answers_match(predicted: str, gold) -> bool:
    """Numbers compare by value (72 == 72.0 == 72.00, 1,000 == 1000); other answers as trimmed,
    case-folded strings."""
    gold = extract_final_answer(gold) if ("####" in str(gold) or "\\boxed{" in str(gold)) else str(gold).strip()
    a, b = _as_number(predicted), _as_number(gold)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return predicted.strip().casefold() == gold.strip().casefold()


def exact_match(prompts: list[str], responses: list[str], answer=None, **fields) -> list[float]:
    """1.0 when the response's final answer (see `extract_final_answer`) equals the row's `answer`, else 0.0.

    Rule-based outcome reward for math-style tasks (e.g. GSM8K, as in DeepSeekMath / GRPO).
    """
    if answer is None:
        raise ValueError("exact_match needs an 'answer' field for every prompt (a column `answer` in the "
                         "prompt data, passed on as fields={'answer': [...]})")
    if len(answer) != len(responses):
        raise ValueError(f"exact_match: {len(answer)} answers for {len(responses)} responses")
    return [1.0 if answers_match(extract_final_answer(r), a) else 0.0 for r, a in zip(responses, answer)]


BUILTIN_REWARDS: dict[str, Callable] = {"exact_match": exact_match}


def _import_file(path: Path):
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(f"rlhfkit_reward_{path.stem}_{digest}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        err.add_note(f"(while importing reward file {path})")
        raise
    return module


def load_reward_function(spec: str) -> Callable:
    """A reward function from "path/to/file.py:function", "module:function" or a built-in name.

    Built-ins: "exact_match". The function is called as fn(prompts, responses, **fields) and must
    return one float per response. Errors name the spec and say what was expected.
    """
    usage = ("expected 'path/to/file.py:function', 'module:function' or a built-in name "
             f"({', '.join(sorted(BUILTIN_REWARDS))})")
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward function spec {spec!r}: {usage}")
    spec = spec.strip()
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    target, _, name = spec.rpartition(":")
    if not target or not name.isidentifier():
        raise ValueError(f"reward function {spec!r}: {usage}")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise FileNotFoundError(f"reward function {spec!r}: file {path} does not exist")
        module, where = _import_file(path), str(path)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            if err.name and target.startswith(err.name):
                raise ValueError(f"reward function {spec!r}: no module named {target!r} on the Python path; "
                                 f"{usage}") from None
            raise
        where = f"module {target}"
    if not hasattr(module, name):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ValueError(f"reward function {spec!r}: {where} defines no {name!r} "
                         f"(callables there: {', '.join(found) or 'none'})")
    fn = getattr(module, name)
    if not callable(fn):
        raise TypeError(f"reward function {spec!r}: {where}.{name} is a {type(fn).__name__}, not a function")
    return fn
