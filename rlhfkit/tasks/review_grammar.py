"""The small English-like language of the `reviews` task: lexicon, generator and parser.

A review is one to three sentences, each ending with " .". Words are lower case and
separated by single spaces (punctuation too), so a word-level tokenizer round-trips them.

    sentence := clause [("and" | "but") clause]          two clauses name different aspects
              | "i would" ["highly" | "not"] "recommend this" SUBJECT
              | "overall , this" SUBJECT "is" adjp
    clause   := "the" ASPECT "is" adjp
              | "i" ["do not"] ["really"] VERB "the" ASPECT
    adjp     := ["not"] [ADVERB] ADJECTIVE

ASPECT must belong to the prompt's SUBJECT (a film has a plot, a phone a battery). Each
parsed sentence has a sentiment in [-1, 1]: the adjective's (or verb's) polarity times the
adverb's strength, clipped; "not" / "do not" flips it and halves it ("not bad" is mildly
positive, not "great").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SUBJECTS: dict[str, tuple[str, ...]] = {
    "phone": ("battery", "screen", "camera", "speaker", "design", "price"),
    "laptop": ("keyboard", "screen", "battery", "performance", "design", "price"),
    "film": ("plot", "acting", "music", "ending", "dialogue", "pacing"),
    "book": ("story", "writing", "ending", "cover", "prose", "pacing"),
    "restaurant": ("food", "service", "staff", "menu", "price", "atmosphere"),
    "hotel": ("room", "bed", "staff", "view", "breakfast", "location"),
    "game": ("gameplay", "story", "soundtrack", "difficulty", "price", "design"),
    "album": ("sound", "production", "voice", "melody", "cover", "music"),
    "car": ("engine", "ride", "interior", "price", "design", "mileage"),
}
ALL_ASPECTS = sorted({a for aspects in SUBJECTS.values() for a in aspects})

ADJECTIVES: dict[str, float] = {
    **dict.fromkeys(("excellent", "amazing", "fantastic", "superb", "wonderful", "perfect",
                     "outstanding", "brilliant"), 1.0),
    **dict.fromkeys(("great", "lovely", "impressive", "beautiful", "delightful"), 0.7),
    **dict.fromkeys(("good", "nice", "solid", "pleasant", "reliable", "fast", "bright", "clean",
                     "fresh", "friendly", "comfortable", "smooth", "sharp", "clear"), 0.4),
    **dict.fromkeys(("okay", "fine", "average", "ordinary", "acceptable", "standard"), 0.0),
    **dict.fromkeys(("slow", "weak", "dull", "noisy", "dirty", "rude", "bland", "flimsy", "dim",
                     "blurry", "stiff", "clumsy"), -0.4),
    **dict.fromkeys(("bad", "poor", "boring", "disappointing", "mediocre", "annoying"), -0.7),
    **dict.fromkeys(("terrible", "awful", "horrible", "dreadful", "useless", "unbearable"), -1.0),
}
INTENSIFIERS = {"very": 1.4, "really": 1.4, "truly": 1.4, "extremely": 1.8, "incredibly": 1.8,
                "quite": 1.2}
DOWNTONERS = {"rather": 0.9, "fairly": 0.8, "somewhat": 0.6, "slightly": 0.5}
ADVERBS = {**INTENSIFIERS, **DOWNTONERS}
VERBS = {"love": 1.0, "adore": 1.0, "enjoy": 0.7, "like": 0.5, "appreciate": 0.5,
         "dislike": -0.5, "hate": -1.0}
RECOMMEND = {None: 0.8, "highly": 1.0, "not": -0.8}
NEGATION = -0.5   # "not great" is mildly negative, not the opposite of great
FUNCTION_WORDS = ("the", "is", "not", "and", "but", "i", "do", "would", "highly", "recommend",
                  "this", "overall", ",", ".")
PROMPT_TEMPLATES = ("review : {s}", "write a review of the {s} :", "what do you think of the {s} ?",
                    "give a short review of this {s} :")


def _clip(x: float) -> float:
    return max(-1.0, min(1.0, x))


# ----------------------------------------------------------------------------- parser

@dataclass(frozen=True)
class Parse:
    """A grammatical, on-topic sentence: its sentiment in [-1, 1] and what it talks about."""
    sentiment: float
    topics: tuple[str, ...]   # aspects, or "verdict:recommend" / "verdict:overall"


def _at(t: list[str], i: int) -> str | None:
    return t[i] if i < len(t) else None


def _aspect_ok(word, subject) -> bool:
    return word in (SUBJECTS[subject] if subject else ALL_ASPECTS)


def _subject_ok(word, subject) -> bool:
    return word == subject if subject else word in SUBJECTS


def _adjp(t, i):
    """adjp starting at i -> (sentiment, next index) or None."""
    negated = _at(t, i) == "not"
    i += negated
    strength = ADVERBS.get(_at(t, i), None)
    i += strength is not None
    if _at(t, i) not in ADJECTIVES:
        return None
    value = _clip(ADJECTIVES[t[i]] * (strength or 1.0))
    return (NEGATION * value if negated else value), i + 1


def _clause(t, i, subject):
    """clause starting at i -> (sentiment, aspect, next index) or None."""
    if _at(t, i) == "the" and _aspect_ok(_at(t, i + 1), subject) and _at(t, i + 2) == "is":
        adj = _adjp(t, i + 3)
        return None if adj is None else (adj[0], t[i + 1], adj[1])
    if _at(t, i) != "i":
        return None
    j = i + 1
    negated = _at(t, j) == "do" and _at(t, j + 1) == "not"
    j += 2 * negated
    strength = 1.4 if _at(t, j) == "really" else 1.0
    j += _at(t, j) == "really"
    if _at(t, j) in VERBS and _at(t, j + 1) == "the" and _aspect_ok(_at(t, j + 2), subject):
        value = _clip(VERBS[t[j]] * strength)
        return (NEGATION * value if negated else value), t[j + 2], j + 3
    return None


def parse_sentence(tokens: list[str], subject: str | None) -> Parse | None:
    """Parse one sentence (its tokens without the final "."); None if it is not in the grammar.

    subject: the prompt's subject; aspects of other subjects then make the sentence invalid.
    None accepts any subject and aspect.
    """
    t = tokens
    if t[:2] == ["i", "would"]:
        mod = _at(t, 2) if _at(t, 2) in ("highly", "not") else None
        j = 2 + (mod is not None)
        if t[j:j + 2] == ["recommend", "this"] and _subject_ok(_at(t, j + 2), subject) \
                and len(t) == j + 3:
            return Parse(RECOMMEND[mod], ("verdict:recommend",))
        return None
    if t[:3] == ["overall", ",", "this"] and _subject_ok(_at(t, 3), subject) and _at(t, 4) == "is":
        adj = _adjp(t, 5)
        return Parse(adj[0], ("verdict:overall",)) if adj and adj[1] == len(t) else None
    first = _clause(t, 0, subject)
    if first is None:
        return None
    value, aspect, end = first
    if end == len(t):
        return Parse(value, (aspect,))
    if _at(t, end) not in ("and", "but"):
        return None
    second = _clause(t, end + 1, subject)
    if second is None or second[2] != len(t) or second[1] == aspect:
        return None
    return Parse((value + second[0]) / 2, (aspect, second[1]))


# -------------------------------------------------------------------------- generator

POSITIVE = [w for w, v in ADJECTIVES.items() if v > 0]
NEGATIVE = [w for w, v in ADJECTIVES.items() if v < 0]
NEUTRAL = [w for w, v in ADJECTIVES.items() if v == 0]


def _gen_adjp(rng: random.Random, sign: int) -> list[str]:
    """Words of an adjective phrase whose sentiment has the given sign (+1, 0, -1)."""
    if sign == 0:
        adv = [rng.choice(list(DOWNTONERS))] if rng.random() < 0.2 else []
        return adv + [rng.choice(NEUTRAL)]
    negated = rng.random() < 0.15
    pool = POSITIVE if (sign > 0) != negated else NEGATIVE
    r = rng.random()
    adv = ([rng.choice(list(INTENSIFIERS))] if r < 0.35 else
           [rng.choice(list(DOWNTONERS))] if r < 0.45 else [])
    return ["not"] * negated + adv + [rng.choice(pool)]


def _gen_clause(rng: random.Random, aspect: str, sign: int) -> list[str]:
    if sign == 0 or rng.random() < 0.75:
        return ["the", aspect, "is"] + _gen_adjp(rng, sign)
    negated = rng.random() < 0.15
    verbs = [v for v, p in VERBS.items() if (p > 0) == ((sign > 0) != negated)]
    return (["i"] + ["do", "not"] * negated + ["really"] * (rng.random() < 0.3)
            + [rng.choice(verbs), "the", aspect])


MOODS = ("positive", "negative", "mixed", "neutral")


def _sign(rng: random.Random, mood: str) -> int:
    if mood == "positive":
        return 0 if rng.random() < 0.1 else 1
    if mood == "negative":
        return 0 if rng.random() < 0.1 else -1
    if mood == "mixed":
        return rng.choice((1, -1))
    return 0


def generate_sentences(rng: random.Random, subject: str, mood: str) -> list[list[str]]:
    """One to three grammatical, on-topic sentences (token lists without ".") in `mood`."""
    if mood not in MOODS:
        raise ValueError(f"mood must be one of {MOODS}, got {mood!r}")
    n = rng.choices((1, 2, 3), weights=(0.25, 0.45, 0.3))[0]
    aspects = rng.sample(SUBJECTS[subject], k=len(SUBJECTS[subject]))
    verdicts = ["recommend", "overall"]
    out = []
    for _ in range(n):
        sign = _sign(rng, mood)
        form = rng.choices(("single", "pair", "verdict"), weights=(0.45, 0.35, 0.2))[0]
        allowed = [v for v in verdicts if sign != 0 or v == "overall"]   # no neutral recommend
        if form == "verdict" and allowed:
            kind = rng.choice(allowed)
            verdicts.remove(kind)
            if kind == "recommend":
                mod = rng.choice(["highly", None, None]) if sign > 0 else "not"
                out.append(["i", "would"] + ([mod] if mod else []) + ["recommend", "this", subject])
            else:
                out.append(["overall", ",", "this", subject, "is"] + _gen_adjp(rng, sign))
        elif form == "pair" and len(aspects) >= 2:
            sign2 = -sign if (mood == "mixed" and rng.random() < 0.7) else _sign(rng, mood)
            joiner = "but" if sign * sign2 < 0 else "and"
            out.append(_gen_clause(rng, aspects.pop(), sign) + [joiner]
                       + _gen_clause(rng, aspects.pop(), sign2))
        elif aspects:
            out.append(_gen_clause(rng, aspects.pop(), sign))
    return out


def join(sentences: list[list[str]], terminate: bool = True) -> str:
    """Sentences -> text, each followed by " ." (the last one too when `terminate`)."""
    parts = [" ".join(s + ["."]) for s in sentences]
    if parts and not terminate:
        parts[-1] = parts[-1][:-2]
    return " ".join(parts)
