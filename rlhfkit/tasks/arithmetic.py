"""`arithmetic`: RL with a verifiable 0/1 reward (GRPO by default), character level.

Prompts are questions like "What is 23+58? " (note the trailing space) and the response is
the answer, "81". By default both operands are 0-99 (one or two digits) and the operation
is addition; `ArithmeticTask(max_digits=..., ops="+-")` makes other variants.

Reward (also the gold): 1.0 when the final integer in the response, read as written, equals
the answer exactly, else 0.0. The response is cut at the first EOS marker ("<eos>", "</s>")
and whitespace does not matter, so "81", " 81 " and "81<eos>" score 1, and so does
"so 81" (only the final number counts); "80", "081", "81+1" and "" score 0.

Every question appears in at most one file, so the held-out prompts were never seen in SFT
or RL. The SFT set is small on purpose (a few hundred demonstrations): the SFT policy learns
the format and some sums, leaving RL room to improve accuracy.

`estimate_fraction` (default 0): that share of the demonstrations comes from a sloppy
annotator who gives an estimate instead of the sum, "about 80" for 81 (rounded to the nearest
ten; right only when the sum is a multiple of ten). The SFT policy imitates the habit; the
verifier reward, which only an exact answer earns, teaches RL to drop it: the textbook case of
RL fixing what the demonstrations taught (the quickstart uses 0.5).
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

from rlhfkit.tasks.base import check_batch, clean_response, resolve_sizes, write_json, write_jsonl

PROMPT = "What is {a}{op}{b}? "
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
# A minus sign counts only when it is not an operator between two digits ("23-5" ends in 5).
_INT = re.compile(r"(?<!\d)-?\d+")
_QUESTION = re.compile(r"(-?\d+)\s*([-+*])\s*(-?\d+)")


ESTIMATE = "about {value}"


def estimate_of(value: int) -> str:
    """A sloppy annotator's answer: "about" and the value rounded to the nearest ten (half up)."""
    return ESTIMATE.format(value=int(math.floor(value / 10 + 0.5)) * 10)


def final_number(response: str) -> str | None:
    """The last integer written in the response (after cutting at EOS), or None."""
    found = _INT.findall(clean_response(response))
    return found[-1] if found else None


def answer_of(prompt: str) -> str:
    """The exact answer to a question like "What is 23+58? " -> "81"."""
    match = _QUESTION.search(prompt)
    if match is None:
        raise ValueError(f"cannot read a question 'a+b' in prompt {prompt!r}; pass the answers "
                         f"as the field 'answer' (one per prompt)")
    a, op, b = match.groups()
    return str(_OPS[op](int(a), int(b)))


def reward(prompts: list[str], responses: list[str], answer=None, **fields) -> list[float]:
    """1.0 where the final integer of the response equals the answer exactly, else 0.0.

    prompts, responses: (B,) lists of str. answer: (B,) answers (str or int) as in the
    prompt files' "answer" field; when omitted they are computed from the prompts.
    Returns (B,) floats in {0.0, 1.0}.
    """
    check_batch(prompts, responses, {"answer": answer} if answer is not None else {})
    answers = [answer_of(p) for p in prompts] if answer is None else [str(a).strip() for a in answer]
    return [float(final_number(r) == a) for r, a in zip(responses, answers)]


gold = reward   # the verifier is the true reward


class ArithmeticTask:
    """Questions "What is a+b? " with a verifiable reward; see the module docstring.

    max_digits: operands are 0 .. 10**max_digits - 1 (default 2). ops: the operations used,
    any of "+-*" (default "+").
    """

    name = "arithmetic"
    tokenizer_level = "char"
    default_sizes = {"sft_train": 400, "sft_eval": 100, "prompts_train": 2000, "prompts_eval": 200}

    def __init__(self, max_digits: int = 2, ops: str = "+", estimate_fraction: float = 0.0):
        if not isinstance(max_digits, int) or not 1 <= max_digits <= 6:
            raise ValueError(f"max_digits must be an int in 1..6, got {max_digits!r}")
        if not ops or set(ops) - set(_OPS):
            raise ValueError(f"ops must be a non-empty string of {''.join(_OPS)!r}, got {ops!r}")
        if not 0.0 <= estimate_fraction < 1.0:
            raise ValueError(f"estimate_fraction must be in [0, 1), got {estimate_fraction!r}")
        self.max_digits, self.ops = max_digits, "".join(dict.fromkeys(ops))
        self.estimate_fraction = float(estimate_fraction)

    def describe(self) -> str:
        """What the task is and how the reward is computed (the module docstring)."""
        return __doc__

    def corpus(self) -> list[str]:
        """All characters prompts and answers use: the template, digits, signs."""
        return [PROMPT.format(a=0, op="+", b=0), "0123456789", "".join(_OPS), ESTIMATE.format(value=0)]

    def gold(self, prompts: list[str], responses: list[str], **fields) -> list[float]:
        return reward(prompts, responses, **fields)

    def reward(self, prompts: list[str], responses: list[str], **fields) -> list[float]:
        return reward(prompts, responses, **fields)

    def _questions(self, seed: int, n: int) -> list[tuple[int, str, int]]:
        """n distinct questions in a seeded order (sampled without replacement)."""
        size = 10 ** self.max_digits
        pool = size * size * len(self.ops)
        if n > pool:
            raise ValueError(f"task 'arithmetic' has only {pool} distinct questions with "
                             f"max_digits={self.max_digits}, ops={self.ops!r}, but the sizes ask "
                             f"for {n}; lower the sizes or raise max_digits")
        picks = random.Random(seed).sample(range(pool), n)
        return [(k // size % size, self.ops[k // (size * size)], k % size) for k in picks]

    def write_data(self, out_dir, seed: int = 0, **sizes) -> dict[str, str]:
        """Write the task's JSONL files under `out_dir`; returns {name: path}.

        sizes (rows; defaults in `default_sizes`): sft_train, sft_eval, prompts_train,
        prompts_eval. Questions are drawn without replacement and dealt in the order
        prompts_eval, sft_eval, sft_train, prompts_train, so no question is in two files and
        the held-out prompts do not change when the training sizes do.
        """
        n = resolve_sizes(self.name, self.default_sizes, sizes)
        order = ("prompts_eval", "sft_eval", "sft_train", "prompts_train")
        questions = iter(self._questions(seed, sum(n[k] for k in order)))
        out, paths = Path(out_dir), {}
        sloppy = random.Random(seed + 1)  # which demonstrations are estimates
        for name in order:
            rows = []
            for _ in range(n[name]):
                a, op, b = next(questions)
                prompt, answer = PROMPT.format(a=a, op=op, b=b), str(_OPS[op](a, b))
                if name.startswith("sft"):
                    estimate = sloppy.random() < self.estimate_fraction
                    rows.append({"prompt": prompt, "response": estimate_of(int(answer)) if estimate else answer})
                else:
                    rows.append({"prompt": prompt, "answer": answer})
            paths[name] = write_jsonl(out / f"{name}.jsonl", rows)
        info = {"task": self.name, "seed": seed, "sizes": n, "max_digits": self.max_digits, "ops": self.ops,
                "estimate_fraction": self.estimate_fraction}
        paths["info"] = write_json(out / "info.json", info)
        return {k: paths[k] for k in ("sft_train", "sft_eval", "prompts_train", "prompts_eval", "info")}

    def sample_responses(self) -> list[dict]:
        """A few responses to "What is 23+58? " with their kind and reward, for docs and tests."""
        p = PROMPT.format(a=23, op="+", b=58)
        examples = [("correct", "81", 1.0), ("trailing space", "81 ", 1.0), ("with eos", "81<eos>", 1.0),
                    ("eos then junk", "81<eos>7", 1.0), ("extra text", "so 81", 1.0),
                    ("wrong", "80", 0.0), ("an estimate", estimate_of(81), 0.0), ("digits reversed", "18", 0.0), ("extra digit", "810", 0.0),
                    ("leading zero", "081", 0.0), ("ends in another number", "81+1", 0.0),
                    ("empty", "", 0.0), ("no number", "eighty one", 0.0)]
        return [{"prompt": p, "response": r, "answer": "81", "kind": k, "reward": v} for k, r, v in examples]
