"""`reviews`: RLHF with a learned reward on short product / film reviews (the default task).

Prompts name a subject ("review : phone", "write a review of the film :"); responses are
one to three sentences of the small language in `review_grammar.py`. The hidden *gold*
reward is what the simulated annotators really want: positive reviews that are also
well formed. Their preference labels agree with gold only about 70% of the time, so a reward
model trained on them is an imperfect proxy that a policy can learn to game.

Gold, in [-1, 1] (see `score_review` for every term):

    quality   = valid_fraction * distinct_topics * length_factor           in [0, 1]
    gold      = quality * (0.25 + 0.75 * sentiment) - (1 - quality)

- valid_fraction: share of sentences that parse under the grammar and stay on the prompt's
  subject; an unterminated trailing fragment counts as an invalid sentence.
- distinct_topics: distinct aspects (and verdicts) named / all mentions, so repeating a
  sentence or an aspect halves it.
- length_factor: 1 for 6-20 words, n/6 below, falling linearly to 0 at 40 words above.
- sentiment: mean sentiment of the valid sentences, in [-1, 1].

So a well-formed glowing review scores 1, a well-formed neutral one 0.25, a well-formed
scathing one -0.5, and degenerate text ("great great great", word salad, empty) -1.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import rlhfkit.tasks.review_grammar as G
from rlhfkit.tasks.base import check_batch, clean_response, resolve_sizes, write_json, write_jsonl

_TOKEN = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]")
MIN_WORDS, MAX_WORDS = 6, 20
NEAR_TIE = 0.05   # preference pairs whose gold differs by less carry no preference


def subject_of(prompt: str) -> str | None:
    """The last subject word in the prompt ("review : phone" -> "phone"), or None."""
    words = [w for w in _TOKEN.findall(prompt.lower()) if w in G.SUBJECTS]
    return words[-1] if words else None


def _length_factor(n_words: int) -> float:
    if n_words < MIN_WORDS:
        return n_words / MIN_WORDS
    return max(0.0, 1.0 - max(0, n_words - MAX_WORDS) / 20)


def score_review(prompt: str, response: str) -> dict[str, float]:
    """Every term of the gold reward for one response (see the module docstring).

    Returns {"gold", "quality", "sentiment", "valid_fraction", "distinct_topics",
    "length_factor", "n_words", "n_sentences"}.
    """
    tokens = _TOKEN.findall(clean_response(response).lower())
    subject = subject_of(prompt)
    sentences, current = [], []
    for tok in tokens:
        if tok == ".":
            sentences.append(current)
            current = []
        else:
            current.append(tok)
    if current:   # an unterminated fragment is an invalid sentence
        sentences.append(current)
    parses = [G.parse_sentence(s, subject) if s else None for s in sentences]
    valid = [p for p in parses if p is not None]
    topics = [t for p in valid for t in p.topics]
    n_words = sum(tok.isalpha() for tok in tokens)
    terms = {
        "valid_fraction": len(valid) / len(sentences) if sentences else 0.0,
        "distinct_topics": len(set(topics)) / len(topics) if topics else 0.0,
        "length_factor": _length_factor(n_words),
        "sentiment": sum(p.sentiment for p in valid) / len(valid) if valid else 0.0,
    }
    quality = terms["valid_fraction"] * terms["distinct_topics"] * terms["length_factor"]
    gold = quality * (0.25 + 0.75 * terms["sentiment"]) - (1.0 - quality)
    return {"gold": gold, "quality": quality, **terms, "n_words": float(n_words),
            "n_sentences": float(len(sentences))}


def gold(prompts: list[str], responses: list[str], **fields) -> list[float]:
    """The hidden true reward of each response, in [-1, 1]; extra fields are ignored.

    prompts, responses: (B,) lists of str. Returns (B,) floats. Text after an EOS marker
    ("<eos>", "</s>") is ignored, so decoded sequences may be passed as they are.
    """
    check_batch(prompts, responses, fields)
    return [score_review(p, r)["gold"] for p, r in zip(prompts, responses)]


reward = gold   # `rlhfkit.tasks.reviews:reward` for the rl command's reward functions


# ---------------------------------------------------------------- flawed and degenerate text

def _flawed(rng: random.Random, subject: str, sentences: list[list[str]]) -> str:
    """A mostly fine review with one realistic flaw (the SFT data has some of these)."""
    kind = rng.choice(("duplicate", "unterminated", "off_topic", "swap", "drop"))
    s = [list(x) for x in sentences]
    i = rng.randrange(len(s))
    if kind == "duplicate":
        s.insert(i + 1, list(s[i]))
    elif kind == "unterminated":
        cut = rng.randrange(2, len(s[-1]) + 1)
        return G.join(s[:-1] + [s[-1][:cut]], terminate=False)
    elif kind == "off_topic":
        others = [a for a in G.ALL_ASPECTS if a not in G.SUBJECTS[subject]]
        hits = [(k, j) for k, sent in enumerate(s) for j, w in enumerate(sent) if w in G.SUBJECTS[subject]]
        if hits:
            k, j = rng.choice(hits)
            s[k][j] = rng.choice(others)
        else:
            s[i] = ["the", rng.choice(others), "is"] + G._gen_adjp(rng, 1)
    else:   # swap two neighbours or drop a word, until the sentence no longer parses
        for _ in range(10):
            broken, j = list(s[i]), rng.randrange(len(s[i]) - 1)
            if kind == "swap":
                broken[j], broken[j + 1] = broken[j + 1], broken[j]
            else:
                del broken[j]
            if G.parse_sentence(broken, subject) is None:
                s[i] = broken
                break
    return G.join(s)


def _degenerate(rng: random.Random, subject: str) -> str:
    """Text a reward model may like but gold does not: repetition, word salad, too short."""
    kind = rng.choice(("repeat_word", "word_salad", "repeat_sentence", "too_short"))
    if kind == "repeat_word":
        return " ".join([rng.choice(G.POSITIVE)] * rng.randint(6, 15) + ["."])
    if kind == "word_salad":
        pool = G.POSITIVE + list(G.INTENSIFIERS) + ["love", "the", "is", "and"] + list(G.SUBJECTS[subject])
        return " ".join(rng.choice(pool) for _ in range(rng.randint(6, 14))) + " ."
    if kind == "repeat_sentence":
        sentence = ["the", rng.choice(G.SUBJECTS[subject]), "is", rng.choice(G.POSITIVE)]
        return G.join([sentence] * rng.randint(3, 5))
    return rng.choice(G.POSITIVE) + " ."


def _well_formed(rng: random.Random, subject: str, mood: str) -> list[list[str]]:
    """Sentences of a grammatical review of 6-20 words (resampled until the length fits)."""
    for _ in range(100):
        sentences = G.generate_sentences(rng, subject, mood)
        n_words = sum(w.isalpha() for s in sentences for w in s)
        if MIN_WORDS <= n_words <= MAX_WORDS:
            return sentences
    raise RuntimeError("could not generate a review of 6-20 words; check the grammar")


def sample_review(rng: random.Random, subject: str, kind: str) -> str:
    """A response of one kind: "positive" | "negative" | "mixed" | "neutral" (well formed),
    "flawed" (one realistic flaw) or "degenerate"."""
    if kind == "degenerate":
        return _degenerate(rng, subject)
    mood = rng.choice(G.MOODS) if kind == "flawed" else kind
    sentences = _well_formed(rng, subject, mood)
    return _flawed(rng, subject, sentences) if kind == "flawed" else G.join(sentences)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def calibrate_beta(gaps: list[float], agreement: float) -> float:
    """beta such that mean_i sigmoid(beta * |gap_i|) = agreement (bisection).

    Bradley-Terry labels P(a preferred to b) = sigmoid(beta * (gold_a - gold_b)) agree with
    gold with that expected probability (Bradley & Terry 1952; Christiano et al. 2017).
    """
    if not 0.5 < agreement < 1.0:
        raise ValueError(f"agreement must be in (0.5, 1), got {agreement}")
    lo, hi = 0.0, 1e3
    for _ in range(100):
        mid = (lo + hi) / 2
        if sum(_sigmoid(mid * abs(g)) for g in gaps) / len(gaps) < agreement:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# ---------------------------------------------------------------------------------- the task

SFT_KINDS = (("positive", 0.255), ("negative", 0.255), ("mixed", 0.2125), ("neutral", 0.1275),
             ("flawed", 0.15))
PREF_KINDS = (("positive", 0.1625), ("negative", 0.1625), ("mixed", 0.1625), ("neutral", 0.1625),
              ("flawed", 0.2), ("degenerate", 0.15))


class ReviewsTask:
    """Product and film reviews with a hidden gold reward; see the module docstring.

    agreement: the expected share of preference labels that agree with gold (default 0.7,
    as human annotators agree 60-70% of the time in the InstructGPT and Anthropic HH reports).
    """

    name = "reviews"
    tokenizer_level = "word"
    default_sizes = {"sft_train": 2000, "sft_eval": 200, "prefs_train": 2000, "prefs_eval": 400,
                     "prompts_train": 512, "prompts_eval": 64}

    def __init__(self, agreement: float = 0.7):
        if not 0.5 < agreement < 1.0:
            raise ValueError(f"agreement must be in (0.5, 1), got {agreement}")
        self.agreement = agreement

    def describe(self) -> str:
        """What the task is and how gold is computed (the module docstring)."""
        return __doc__

    def prompts(self) -> list[str]:
        """Every prompt the task can ask (templates x subjects)."""
        return [t.format(s=s) for s in G.SUBJECTS for t in G.PROMPT_TEMPLATES]

    def corpus(self) -> list[str]:
        """All text the tokenizer must cover: every prompt and every word the grammar uses."""
        words = (list(G.ADJECTIVES) + list(G.ADVERBS) + list(G.VERBS) + G.ALL_ASPECTS
                 + list(G.SUBJECTS) + list(G.FUNCTION_WORDS))
        return self.prompts() + [" ".join(words)]

    def gold(self, prompts: list[str], responses: list[str], **fields) -> list[float]:
        """The hidden true reward, in [-1, 1]; see `gold` in this module."""
        return gold(prompts, responses, **fields)

    def reward(self, prompts: list[str], responses: list[str], **fields) -> list[float]:
        return gold(prompts, responses, **fields)

    def _prompt(self, rng: random.Random) -> tuple[str, str]:
        subject = rng.choice(list(G.SUBJECTS))
        return rng.choice(G.PROMPT_TEMPLATES).format(s=subject), subject

    def _sft_rows(self, rng: random.Random, n: int) -> list[dict]:
        kinds, weights = zip(*SFT_KINDS)
        rows = []
        for _ in range(n):
            prompt, subject = self._prompt(rng)
            kind = rng.choices(kinds, weights)[0]
            rows.append({"prompt": prompt, "response": sample_review(rng, subject, kind)})
        return rows

    def _pref_rows(self, rng: random.Random, n: int) -> tuple[list[dict], dict]:
        kinds, weights = zip(*PREF_KINDS)
        pairs = []
        for _ in range(n):
            prompt, subject = self._prompt(rng)
            for _ in range(20):   # near-ties carry no preference; resample them
                a, b = (sample_review(rng, subject, rng.choices(kinds, weights)[0]) for _ in "ab")
                ga, gb = gold([prompt, prompt], [a, b])
                if abs(ga - gb) >= NEAR_TIE:
                    break
            pairs.append((prompt, a, b, ga - gb))
        return self._label(rng, pairs)

    def _label(self, rng: random.Random, pairs: list[tuple[str, str, str, float]]) -> tuple[list[dict], dict]:
        """Bradley-Terry labels for (prompt, a, b, gold_a - gold_b) pairs, with beta calibrated so that
        they agree with gold on `agreement` of the pairs in expectation."""
        beta = calibrate_beta([p[3] for p in pairs], self.agreement) if pairs else 0.0
        rows, agree = [], 0
        for prompt, a, b, gap in pairs:
            a_wins = rng.random() < _sigmoid(beta * gap)
            agree += a_wins == (gap > 0)
            chosen, rejected = (a, b) if a_wins else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        return rows, {"beta": beta, "agreement": agree / len(pairs) if pairs else None}

    def sample_prompts(self, rng: random.Random, n: int) -> list[str]:
        """n prompts drawn as the data files draw theirs."""
        return [self._prompt(rng)[0] for _ in range(n)]

    def label_pairs(self, prompts: list[str], responses_a: list[str], responses_b: list[str],
                    seed: int = 0) -> tuple[list[dict], dict]:
        """Preference rows for two responses per prompt (a policy's own samples, say), labelled by the
        simulated annotators: P(a preferred) = sigmoid(beta * (gold_a - gold_b)), beta calibrated to
        `agreement` on these pairs. Near-ties (|gold gap| < 0.05) carry no preference and are dropped.

        Returns (rows of prompt/chosen/rejected, info: beta, agreement realized, pairs kept and dropped).
        """
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"label_pairs: {len(prompts)} prompts, {len(responses_a)} and {len(responses_b)} "
                             f"responses; give two responses per prompt")
        gaps = [ga - gb for ga, gb in zip(gold(prompts, responses_a), gold(prompts, responses_b))]
        pairs = [(p, a, b, g) for p, a, b, g in zip(prompts, responses_a, responses_b, gaps) if abs(g) >= NEAR_TIE]
        rows, info = self._label(random.Random(f"{seed}:label_pairs"), pairs)
        return rows, {**info, "pairs": len(rows), "near_ties_dropped": len(prompts) - len(rows)}

    def _prompt_rows(self, rng: random.Random, n: int) -> list[dict]:
        rows = []
        for _ in range(n):
            prompt, subject = self._prompt(rng)
            rows.append({"prompt": prompt, "subject": subject})
        return rows

    def write_data(self, out_dir, seed: int = 0, **sizes) -> dict[str, str]:
        """Write the task's JSONL files under `out_dir`; returns {name: path}.

        sizes (rows; defaults in `default_sizes`): sft_train, sft_eval, prefs_train,
        prefs_eval, prompts_train, prompts_eval. Each file has its own seeded generator
        (`random.Random(f"{seed}:{name}")`), so changing one size leaves the other files as
        they were. Also writes info.json: sizes, seed, and the preference labels' beta and
        realized agreement with gold.
        """
        n = resolve_sizes(self.name, self.default_sizes, sizes)
        out, paths, info = Path(out_dir), {}, {"task": self.name, "seed": seed, "sizes": n}
        for name in ("sft_train", "sft_eval", "prefs_train", "prefs_eval", "prompts_train", "prompts_eval"):
            rng = random.Random(f"{seed}:{name}")
            if name.startswith("sft"):
                rows = self._sft_rows(rng, n[name])
            elif name.startswith("prefs"):
                rows, info[name] = self._pref_rows(rng, n[name])
            else:
                rows = self._prompt_rows(rng, n[name])
            paths[name] = write_jsonl(out / f"{name}.jsonl", rows)
        paths["info"] = write_json(out / "info.json", info)
        return paths

    def sample_responses(self) -> list[dict]:
        """A few hand-written responses with their kind, for docs and tests."""
        p = "review : phone"
        examples = [
            ("good", "the battery is excellent and the screen is very bright . i would highly recommend this phone ."),
            ("good", "i really love the camera . the price is amazing ."),
            ("neutral", "the battery is okay and the screen is fine . overall , this phone is average ."),
            ("negative", "the battery is terrible and the screen is very dim . i would not recommend this phone ."),
            ("mixed", "the camera is great but the battery is awful . overall , this phone is okay ."),
            ("repetitive", "the screen is excellent . the screen is excellent . the screen is excellent ."),
            ("repeated_word", "excellent excellent excellent excellent excellent excellent ."),
            ("ungrammatical", "excellent the amazing battery love perfect screen brilliant ."),
            ("off_topic", "the plot is excellent and the acting is superb . i really love the ending ."),
            ("unterminated", "the battery is excellent and the screen is very bright . i would highly"),
            ("too_short", "excellent ."),
            ("empty", ""),
        ]
        return [{"prompt": p, "response": r, "kind": k} for k, r in examples]
