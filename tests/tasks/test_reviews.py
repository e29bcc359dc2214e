import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.tasks import get_task
from rlhfkit.tasks import review_grammar as G
from rlhfkit.tasks import reviews as R
from tests.tasks.helpers import assert_no_unk, read_jsonl

SMALL = {"sft_train": 200, "sft_eval": 20, "prefs_train": 200, "prefs_eval": 20,
         "prompts_train": 30, "prompts_eval": 8}


@pytest.fixture(scope="module")
def task():
    return get_task("reviews")


@pytest.fixture(scope="module")
def written(task, tmp_path_factory):
    out = tmp_path_factory.mktemp("reviews")
    return task.write_data(out, seed=0, **SMALL)


def g(prompt, response):
    return R.gold([prompt], [response])[0]


# ------------------------------------------------------------------------------- files

def test_files_have_the_documented_fields_and_sizes(task, written):
    prompts = set(task.prompts())
    fields = {"sft": {"prompt", "response"}, "prefs": {"prompt", "chosen", "rejected"},
              "prompts": {"prompt", "subject"}}
    for name, size in SMALL.items():
        rows = read_jsonl(written[name])
        assert len(rows) == size
        for row in rows:
            assert set(row) == fields[name.split("_")[0]]
            assert all(isinstance(v, str) for v in row.values())
            assert row["prompt"] in prompts
            if "subject" in row:
                assert R.subject_of(row["prompt"]) == row["subject"]
    info = json.loads(open(written["info"]).read())
    assert info["sizes"] == {**task.default_sizes, **SMALL}


def test_same_seed_same_bytes_other_seed_other_data(task, tmp_path):
    a = task.write_data(tmp_path / "a", seed=3, **SMALL)
    b = task.write_data(tmp_path / "b", seed=3, **SMALL)
    c = task.write_data(tmp_path / "c", seed=4, **SMALL)
    for name in SMALL:
        assert open(a[name], "rb").read() == open(b[name], "rb").read()
        assert open(a[name], "rb").read() != open(c[name], "rb").read()


def test_changing_one_size_leaves_other_files_unchanged(task, tmp_path, written):
    other = task.write_data(tmp_path, seed=0, **{**SMALL, "prefs_train": 50})
    assert open(other["sft_train"], "rb").read() == open(written["sft_train"], "rb").read()
    assert len(read_jsonl(other["prefs_train"])) == 50


def test_bad_sizes_raise_clear_errors(task, tmp_path):
    with pytest.raises(ValueError, match="valid sizes are"):
        task.write_data(tmp_path, sft_trian=10)
    with pytest.raises(ValueError, match="non-negative int"):
        task.write_data(tmp_path, sft_train=-1)


def test_corpus_covers_every_token_and_text_round_trips(task, written):
    tok = assert_no_unk(task, written)
    assert 150 <= len(tok) <= 300
    # The rl loop scores decoded text: decoding must give back the same gold.
    rows = read_jsonl(written["prefs_train"])[:100]
    for row in rows:
        for text in (row["chosen"], row["rejected"]):
            decoded = tok.decode(tok(text, add_special_tokens=False)["input_ids"])
            assert g(row["prompt"], decoded) == g(row["prompt"], text)


# ---------------------------------------------------------------------- preference labels

def test_preference_labels_agree_with_gold_about_70_percent(task, tmp_path):
    paths = task.write_data(tmp_path, seed=1, sft_train=0, sft_eval=0, prefs_train=3000, prefs_eval=0,
                            prompts_train=0, prompts_eval=0)
    rows = read_jsonl(paths["prefs_train"])
    chosen = R.gold([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = R.gold([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert all(abs(c - r) >= 0.05 for c, r in zip(chosen, rejected))   # no near-ties
    agreement = sum(c > r for c, r in zip(chosen, rejected)) / len(rows)
    assert 0.65 <= agreement <= 0.75
    assert json.loads(open(paths["info"]).read())["prefs_train"]["agreement"] == pytest.approx(agreement)
    # degenerate responses are among the pairs, and are sometimes (wrongly) chosen
    assert any(c == -1.0 for c in chosen) and any(r == -1.0 for r in rejected)


def test_agreement_option_moves_the_label_noise(tmp_path):
    paths = get_task("reviews", agreement=0.9).write_data(
        tmp_path, seed=1, sft_train=0, sft_eval=0, prefs_train=2000, prefs_eval=0, prompts_train=0, prompts_eval=0)
    rows = read_jsonl(paths["prefs_train"])
    c = R.gold([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    r = R.gold([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert sum(a > b for a, b in zip(c, r)) / len(rows) > 0.85


def test_label_pairs_drops_near_ties_and_labels_by_bradley_terry(task):
    good = "the battery is excellent and the screen is very bright . i would highly recommend this phone ."
    bad = "excellent excellent excellent excellent excellent excellent ."
    neutral = "the battery is okay and the screen is fine . overall , this phone is average ."
    prompts = ["review : phone"] * 3000
    a = [good, bad, good] * 1000
    b = [bad, good, good] * 1000   # the third of each triple is a tie: dropped
    rows, info = task.label_pairs(prompts, a, b, seed=0)
    assert info["pairs"] == len(rows) == 2000 and info["near_ties_dropped"] == 1000
    assert all({r["chosen"], r["rejected"]} == {good, bad} for r in rows)
    # one gap size (|gold(good) - gold(bad)| = 2): beta = logit(0.7) / 2, and about 70% of labels agree
    assert info["beta"] == pytest.approx(math.log(0.7 / 0.3) / (g(prompts[0], good) - g(prompts[0], bad)), rel=1e-6)
    agree = sum(r["chosen"] == good for r in rows) / len(rows)
    assert agree == pytest.approx(info["agreement"]) and 0.66 <= agree <= 0.74   # 2000 draws: se 0.01
    # a larger gap is labelled more reliably than a smaller one with the same beta (the BT curve)
    rows, _ = task.label_pairs(["review : phone"] * 4000, [good, neutral] * 2000, [bad, bad] * 2000, seed=1)
    by_kind = {good: [], neutral: []}
    for r in rows:
        winner = r["chosen"] if r["chosen"] != bad else r["rejected"]
        by_kind[winner].append(r["chosen"] != bad)
    assert sum(by_kind[good]) / len(by_kind[good]) > sum(by_kind[neutral]) / len(by_kind[neutral]) + 0.05
    assert task.label_pairs(prompts[:2], a[:2], b[:2], seed=5) == task.label_pairs(prompts[:2], a[:2], b[:2], seed=5)
    with pytest.raises(ValueError, match="two responses per prompt"):
        task.label_pairs(prompts[:2], a[:2], b[:1])


def test_calibrate_beta_hand_examples():
    # equal gaps: sigmoid(beta * g) = a  =>  beta = logit(a) / g
    assert R.calibrate_beta([0.5, -0.5, 0.5], 0.7) == pytest.approx(math.log(0.7 / 0.3) / 0.5, rel=1e-6)
    assert R.calibrate_beta([2.0], 1 / (1 + math.exp(-1))) == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(ValueError):
        R.calibrate_beta([1.0], 0.4)


# -------------------------------------------------------------------------------- gold

def test_gold_ranks_good_above_negative_and_degenerate(task):
    by_kind = {}
    for ex in task.sample_responses():
        by_kind.setdefault(ex["kind"], []).append(g(ex["prompt"], ex["response"]))
    worst_good = min(by_kind.pop("good"))
    assert worst_good > 0.8
    for kind, values in by_kind.items():
        assert max(values) < worst_good, kind
    for kind in ("repetitive", "repeated_word", "ungrammatical", "off_topic", "too_short", "empty", "unterminated"):
        assert max(by_kind[kind]) < by_kind["neutral"][0], kind
    for kind in ("repeated_word", "ungrammatical", "off_topic", "empty"):
        assert by_kind[kind] == [-1.0], kind
    assert by_kind["negative"][0] < min(by_kind["mixed"][0], by_kind["neutral"][0])


def test_sentiment_words_negation_and_adverbs():
    p = "review : phone"
    assert g(p, "the battery is great and the screen is bright .") > g(p, "the battery is okay and the screen is bright .")
    assert g(p, "the battery is not terrible and the screen is fine .") > g(p, "the battery is terrible and the screen is fine .")
    assert g(p, "the battery is not great and the screen is fine .") < g(p, "the battery is great and the screen is fine .")
    assert g(p, "the battery is very good and the screen is fine .") > g(p, "the battery is slightly good and the screen is fine .")
    assert g(p, "i would recommend this phone . the screen is fine .") > g(p, "i would not recommend this phone . the screen is fine .")
    assert g(p, "i do not hate the camera and the screen is fine .") > g(p, "i hate the camera and the screen is fine .")
    # negation flips the sign ("not terrible" is positive, "not great" negative) and halves it
    sentiment = lambda r: R.score_review(p, r)["sentiment"]
    assert sentiment("the battery is not terrible .") == pytest.approx(0.5)
    assert sentiment("the battery is not great .") == pytest.approx(-0.35)
    assert sentiment("i do not like the camera .") == pytest.approx(-0.25)
    assert sentiment("the battery is extremely good .") == pytest.approx(0.72)
    assert sentiment("the battery is extremely excellent .") == 1.0   # clipped


def test_well_formedness_terms():
    p = "write a review of the film :"
    good = "the plot is excellent . i love the acting ."
    s = R.score_review(p, good)
    assert (s["valid_fraction"], s["distinct_topics"], s["length_factor"], s["gold"]) == (1.0, 1.0, 1.0, 1.0)
    # a repeated aspect halves distinct_topics; an unterminated fragment is an invalid sentence
    assert R.score_review(p, "the plot is excellent . i love the plot .")["distinct_topics"] == 0.5
    assert R.score_review(p, good + " the music")["valid_fraction"] == pytest.approx(2 / 3)
    # the phone's aspects are off topic for a film, fine for a phone
    assert R.score_review(p, "the battery is excellent . i love the camera .")["valid_fraction"] == 0.0
    assert R.score_review("review : phone", "the battery is excellent . i love the camera .")["gold"] == 1.0
    # too short and too long lose quality
    assert R.score_review(p, "the plot is excellent .")["length_factor"] == pytest.approx(4 / 6)
    long = " ".join(f"the {a} is excellent ." for a in G.SUBJECTS["film"])   # 24 words
    assert R.score_review(p, long)["length_factor"] == pytest.approx(1 - 4 / 20)


def test_text_after_eos_is_ignored_and_batches_are_checked():
    p, r = "review : car", "the engine is superb . i would highly recommend this car ."
    assert g(p, r + "<eos> great great great") == g(p, r) == g(p, "<bos> " + r + " <eos><pad><pad>")
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        R.gold([p, p], [r])


def test_sft_data_is_mostly_well_formed_and_mediocre(task, written):
    rows = read_jsonl(written["sft_train"])
    scores = [R.score_review(r["prompt"], r["response"]) for r in rows]
    well_formed = sum(s["quality"] == 1.0 for s in scores) / len(rows)
    mean_gold = sum(s["gold"] for s in scores) / len(rows)
    assert 0.7 <= well_formed < 1.0
    assert 0.0 < mean_gold < 0.5   # far below the best possible (1.0): room for RL
    assert min(s["sentiment"] for s in scores) < 0 < max(s["sentiment"] for s in scores)
    lengths = [s["n_words"] for s, x in zip(scores, rows) if s["quality"] == 1.0]
    assert min(lengths) >= R.MIN_WORDS and max(lengths) <= R.MAX_WORDS


def test_generated_sentences_parse_and_broken_ones_do_not():
    rng = random.Random(0)
    for _ in range(300):
        subject = rng.choice(list(G.SUBJECTS))
        for sentence in G.generate_sentences(rng, subject, rng.choice(G.MOODS)):
            assert G.parse_sentence(sentence, subject) is not None, sentence
            assert G.parse_sentence(sentence[::-1], subject) is None, sentence
            assert G.parse_sentence(sentence[:-1], subject) is None, sentence


_WORDS = sorted(set(" ".join(get_task("reviews").corpus()).split()))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_WORDS + ["<eos>", "."]), max_size=40), st.sampled_from(get_task("reviews").prompts()))
def test_gold_stays_in_range_for_any_word_sequence(words, prompt):
    assert -1.0 <= g(prompt, " ".join(words)) <= 1.0
