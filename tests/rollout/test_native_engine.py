"""The native engine samples what HF generate samples, while computing only the positions it needs.

Mutations tried (each makes a test here fail):
- seeded draws keyed by cache row instead of result row (`keys[:len(rows)]`): same tokens, key-only rows;
- finished rows kept in the decode batch (no `batch_select_indices`): same tokens (stop strings), stats;
- the decode position not advanced (`positions + 1` dropped): same tokens;
- logprobs at temperature 1 instead of T: logprobs vs forward;
- the unseeded draw without top-p, or at temperature 1: the chi-square test;
- the fallback check skipped, or its warning logged on every call: fallback;
- HF's decode counted as N x R instead of N x (R - 1): stats vs the counted forwards;
- add_special_tokens not passed on: prompt ids / special tokens.
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from rlhfkit.models import position_ids_from_mask, response_logprobs
from rlhfkit.models.families import FAMILIES, build_family_model, build_family_tokenizer
from rlhfkit.rollout import GenerationSettings, make_engine
from rlhfkit.rollout.generation import eos_token_ids
from rlhfkit.rollout.native import length_groups
from rlhfkit.rollout.seeded import filter_top_k_top_p, row_keys
from tests.rollout.test_generation import eos_biased

PROMPTS = ["the cat sat on", "what is 1 + 2 ?", "a dog", "good bad review : positive negative the cat"]

# name -> (settings, EOS bias of the model): with these, rows end by EOS at different steps (some by length).
CASES = {
    "sample-n1": (GenerationSettings(max_new_tokens=8, n=1, temperature=0.7), 1.0),
    "sample-n3-topk-topp": (GenerationSettings(max_new_tokens=8, n=3, temperature=0.9, top_k=6, top_p=0.8), 1.0),
    "greedy-n2": (GenerationSettings(max_new_tokens=8, n=2, do_sample=False), 0.2),
    "stop-n3": (GenerationSettings(max_new_tokens=8, n=3, stop_strings=("the", "?")), 1.0),
}


def both(model, tokenizer, prompts, settings, keys=None, want_logprobs=False):
    """(hf result, native result, hf engine, native engine) for the same call."""
    hf, native = make_engine("hf", model, tokenizer), make_engine("native", model, tokenizer)
    out = [e.generate(prompts, settings, row_keys=keys, want_logprobs=want_logprobs) for e in (hf, native)]
    return out[0], out[1], hf, native


def assert_same_result(a, b):
    for field in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "eos", "stopped"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert a.prompts == b.prompts and a.responses == b.responses


@pytest.fixture(scope="module")
def policy(tiny_model, tiny_tokenizer):
    """The tiny Llama with a bias on EOS: some responses end by EOS mid-way, some by length."""
    return eos_biased(tiny_model, tiny_tokenizer, bias=1.0).eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_tokens_as_hf_generate_with_row_keys(tiny_model, tiny_tokenizer, case):
    settings, bias = CASES[case]
    keys = row_keys(3, 1, torch.arange(len(PROMPTS) * settings.n))
    a, b, _, native = both(eos_biased(tiny_model, tiny_tokenizer, bias).eval(), tiny_tokenizer, PROMPTS, settings,
                           keys, want_logprobs=True)
    assert_same_result(a, b)
    assert native.unsupported() is None  # ran natively: each prompt prefilled once, in groups of similar length
    assert native.last_stats["prefill_positions_computed"] < a.prompt_ids.shape[1] * len(PROMPTS)
    lengths = a.response_mask.sum(1).long().tolist()
    assert int((a.eos & ~a.stopped).sum()) > 0 and len(set(lengths)) > 1  # rows leave the batch at different steps
    if settings.stop_strings:
        assert 0 < int(a.stopped.sum()) < len(a.stopped)
    m = a.response_mask
    torch.testing.assert_close(b.logprobs * m, a.logprobs * m, atol=1e-5, rtol=0)


def _family(name):
    fam = FAMILIES[name]
    tok = build_family_tokenizer(fam)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # as rlhfkit.models.load_tokenizer does
    model = build_family_model(fam, tok, seed=0).eval()
    bias = torch.zeros(len(tok))
    bias[eos_token_ids(model, tok)] = 2.0  # EOS mid-way: a random tiny model rarely picks it
    model.get_output_embeddings().register_forward_hook(lambda module, inputs, out: out + bias)
    return tok, model


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_families_same_tokens_as_hf(name):
    from rlhfkit.rollout.native import native_unsupported

    tok, model = _family(name)
    prompts = ["what is 1 + 2 ?", "tell me a short story about a cat and a dog .", "hi"]
    settings = GenerationSettings(max_new_tokens=8, n=2, temperature=0.8, top_p=0.95)
    keys = row_keys(0, 2, torch.arange(len(prompts) * 2))
    a, b, hf, native = both(model, tok, prompts, settings, keys)
    assert_same_result(a, b)
    assert int(a.eos.sum()) > 0 and len(set(a.response_mask.sum(1).tolist())) > 1
    # Every family of the matrix runs natively today; one that did not would take HF generate's path.
    assert native_unsupported(model) is None
    assert native.last_stats["prefill_positions_computed"] <= a.prompt_ids.shape[1] * len(prompts)


def test_prompt_ids_and_special_tokens_as_hf():
    tok, model = _family("llama3")  # a chat template: texts are tokenized without BOS unless asked
    prompts = ["what is 1 + 2 ?", "hi"]
    settings = GenerationSettings(max_new_tokens=5, n=2)
    keys = row_keys(0, 3, torch.arange(4))
    hf, native = make_engine("hf", model, tok), make_engine("native", model, tok)
    with_bos = native.generate(prompts, settings, row_keys=keys, add_special_tokens=True)
    assert_same_result(hf.generate(prompts, settings, row_keys=keys, add_special_tokens=True), with_bos)
    assert with_bos.prompt_ids[0, 0] == tok.bos_token_id
    assert native.generate(prompts, settings, row_keys=keys).prompt_ids[0, 0] != tok.bos_token_id
    given = tok(prompts, add_special_tokens=True)["input_ids"]
    assert_same_result(native.generate(prompts, settings, prompt_ids=given, row_keys=keys), with_bos)


def test_a_rows_tokens_depend_only_on_its_key(policy, tiny_tokenizer):
    engine = make_engine("native", policy, tiny_tokenizer)
    settings = GenerationSettings(max_new_tokens=8, n=2, temperature=0.9)
    keys = row_keys(0, 7, torch.arange(8))
    whole = engine.generate(PROMPTS, settings, row_keys=keys)
    assert 0 < int(whole.eos.sum()) < 8  # rows leave the batch at different steps
    # Other neighbours, another order, another padding width, other rows finishing first.
    part = engine.generate([PROMPTS[3], PROMPTS[1]], settings, row_keys=keys[[6, 7, 2, 3]])
    assert part.responses == [whole.responses[i] for i in (6, 7, 2, 3)]
    alone = engine.generate([PROMPTS[2]], GenerationSettings(max_new_tokens=8, n=1, temperature=0.9),
                            row_keys=keys[5:6])
    assert alone.responses == [whole.responses[5]]
    assert any(whole.responses[2 * i] != whole.responses[2 * i + 1] for i in range(4))  # keys differ, samples too


def _joint_probs(model, tokenizer, prompt, settings):
    """{(t1, t2): probability} of the first two tokens under the filtered softmax(logits / T)."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        first = filter_top_k_top_p(model(ids).logits[:, -1] / settings.temperature, settings.top_k,
                                   settings.top_p).softmax(-1)[0]
        out = {}
        for t1 in first.nonzero().flatten().tolist():
            logits = model(torch.cat([ids, torch.tensor([[t1]])], 1)).logits[:, -1] / settings.temperature
            second = filter_top_k_top_p(logits, settings.top_k, settings.top_p).softmax(-1)[0]
            out.update({(t1, t2): float(first[t1] * second[t2]) for t2 in second.nonzero().flatten().tolist()})
    return out


def _chi_square_p(counts: dict, probs: dict, total: int) -> float:
    """p-value of counts against probs (cells with expected < 5 pooled; a count outside probs' support gives 0)."""
    if set(counts) - set(probs):
        return 0.0
    big = {c for c, p in probs.items() if p * total >= 5}
    observed = [counts.get(c, 0) for c in big] + [sum(v for c, v in counts.items() if c not in big)]
    expected = [probs[c] * total for c in big] + [sum(p for c, p in probs.items() if c not in big) * total]
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected) if e > 0)
    return float(torch.special.gammaincc(torch.tensor((len(observed) - 1) / 2), torch.tensor(stat / 2)))


def test_unseeded_samples_follow_the_same_distribution_as_hf(tiny_model, tiny_tokenizer):
    # Sharper logits than the random model's, so that a wrong temperature moves the distribution a lot.
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)
    settings = GenerationSettings(max_new_tokens=2, n=3000, temperature=0.7, top_k=8, top_p=0.85)
    probs = _joint_probs(model, tiny_tokenizer, "the cat", settings)
    assert 4 <= len(probs) and max(probs.values()) < 0.6  # several likely pairs
    for name in ("native", "hf"):
        torch.manual_seed(0)
        result = make_engine(name, model, tiny_tokenizer).generate(["the cat"], settings)
        pairs = [tuple(r) for r in result.response_ids[:, :2].tolist()]
        counts = {c: pairs.count(c) for c in set(pairs)}
        assert _chi_square_p(counts, probs, len(pairs)) > 1e-3, name


def test_logprobs_equal_a_forward(policy, tiny_tokenizer):
    settings = GenerationSettings(max_new_tokens=7, n=3, temperature=0.7, top_k=10)
    torch.manual_seed(0)
    gen = make_engine("native", policy, tiny_tokenizer).generate(PROMPTS, settings, want_logprobs=True)
    assert 0 < int(gen.eos.sum()) < len(gen.eos)
    ids = torch.cat([gen.prompt_ids, gen.response_ids], 1)
    mask = torch.cat([gen.prompt_mask, gen.response_mask.long()], 1)
    with torch.no_grad():
        ref = response_logprobs(policy, ids, mask, position_ids_from_mask(mask), gen.response_ids.shape[1],
                                temperature=settings.temperature)
    m = gen.response_mask
    torch.testing.assert_close(gen.logprobs * m, ref * m, atol=1e-5, rtol=0)
    bf16 = make_engine("native", copy.deepcopy(policy).to(torch.bfloat16), tiny_tokenizer)
    assert bf16.generate(PROMPTS[:1], settings, want_logprobs=True).logprobs is None  # not exact in bf16


def _count_positions(model):
    """A list that collects input_ids.numel() of every forward of `model`; returns (list, hook handle)."""
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"].numel()),
                                             with_kwargs=True)
    return seen, handle


def test_stats_count_what_the_forwards_ran(policy, tiny_tokenizer):
    settings = GenerationSettings(max_new_tokens=8, n=3, temperature=0.9)
    lengths = [len(tiny_tokenizer(p)["input_ids"]) for p in PROMPTS]
    keys = row_keys(0, 4, torch.arange(12))
    seen, handle = _count_positions(policy)
    try:
        stats = {}
        for name in ("hf", "native"):
            seen.clear()
            engine = make_engine(name, policy, tiny_tokenizer)
            result = engine.generate(PROMPTS, settings, row_keys=keys)
            stats[name] = engine.last_stats
            assert stats[name]["positions_computed"] == sum(seen), name
            prefills = len(length_groups(lengths)) if name == "native" else 1  # native: one forward per group
            assert stats[name]["prefill_positions_computed"] == sum(seen[:prefills]), name
    finally:
        handle.remove()
    needed = {"prefill_positions_needed": sum(lengths),
              "decode_positions_needed": int((result.response_mask.sum(1) - 1).sum())}
    assert {k: stats["hf"][k] for k in needed} == needed == {k: stats["native"][k] for k in needed}
    # Native: each prompt once, and no decode waste; HF: every sample's prompt, every row every step.
    width, rows = result.prompt_ids.shape[1], len(result.eos)
    groups = length_groups(lengths)
    assert stats["native"]["prefill_positions_computed"] == sum(len(g) * max(lengths[i] for i in g) for g in groups)
    assert stats["native"]["prefill_positions_computed"] < 4 * width  # less than one padded prefill of the 4 prompts
    assert stats["native"]["decode_positions_computed"] == needed["decode_positions_needed"]
    assert stats["hf"]["prefill_positions_computed"] == rows * width
    assert stats["hf"]["decode_positions_computed"] == rows * (result.response_ids.shape[1] - 1)
    assert stats["hf"]["decode_positions_computed"] > stats["native"]["decode_positions_computed"]


def test_fallback_to_hf_generate_logged_once(policy, tiny_tokenizer, caplog):
    model = copy.deepcopy(policy)
    model._supports_default_dynamic_cache = lambda: False  # as a model with its own cache type says
    settings = GenerationSettings(max_new_tokens=6, n=2)
    keys = row_keys(1, 1, torch.arange(8))
    engine = make_engine("native", model, tiny_tokenizer)
    with caplog.at_level(logging.WARNING, logger="rlhfkit.rollout"):
        out = [engine.generate(PROMPTS, settings, row_keys=keys) for _ in range(2)]
    assert [r.getMessage() for r in caplog.records].count(
        "native engine: sampling with hf instead, because of LlamaForCausalLM needs its own cache type") == 1
    reference = make_engine("hf", model, tiny_tokenizer)
    assert_same_result(out[1], reference.generate(PROMPTS, settings, row_keys=keys))
    assert engine.last_stats == reference.last_stats  # HF generate's positions: it ran there


def test_rl_loop_same_metrics_with_native_engine(tmp_path):
    from rlhfkit.models.tiny import save_tiny
    from rlhfkit.trainers.rl import RLConfig, train_rl

    words = ["good", "bad", "the", "movie", "phone", "is", "review", ":"]
    model = save_tiny(tmp_path / "model", [" ".join(words)], hidden_size=32, num_layers=1, num_heads=2)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"review : {w}"}) + "\n" for w in ("movie", "the phone") * 4))
    (tmp_path / "reward.py").write_text(
        "def good(prompts, responses, **fields):\n"
        "    return [r.split().count('good') / max(len(r.split()), 1) for r in responses]\n")
    rows = {}
    for engine in ("hf", "native"):
        cfg = RLConfig(policy=model, prompts=str(prompts), output=str(tmp_path / engine), engine=engine,
                       reward_fn=f"{tmp_path / 'reward.py'}:good", algo="grpo", n=4, steps=3, prompts_per_step=2,
                       max_new_tokens=6, lr=1e-2, device="cpu", seed=0, seeded_sampling=True)
        train_rl(cfg)
        lines = [json.loads(line) for line in (tmp_path / engine / "metrics.jsonl").read_text().splitlines()]
        assert f"engine={engine}" in lines[0]["message"]  # the run's start event names the engine it sampled with
        rows[engine] = [{k: v for k, v in line.items() if not k.startswith("time/")} for line in lines
                        if "event" not in line]
    assert [r["step"] for r in rows["hf"]] == [0, 1, 2, 3]  # step 0: the probe of the starting policy
    for a, b in zip(rows["hf"], rows["native"]):
        assert a.keys() == b.keys()
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
    assert len({r["reward/score_mean"] for r in rows["hf"][1:]}) == 3  # each step sampled from a moved policy


def test_length_groups_by_hand():
    from rlhfkit.rollout.native import length_groups

    # two clusters: two prefills of 4 x 10 and 4 x 100 positions (440 + 2 x 10 % of 800) beat one of 8 x 100 (+ 10 %)
    assert length_groups([100, 10, 100, 10, 10, 100, 10, 100]) == [[1, 3, 4, 6], [0, 2, 5, 7]]
    assert length_groups([10, 11, 10]) == [[0, 2, 1]]  # not worth a second forward
    lengths = [16, 20, 128, 30, 100, 17, 64, 120]
    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(8)) and 1 < len(groups) <= 4
    assert sum(len(g) * max(lengths[i] for i in g) for g in groups) < 8 * 128


def _length_groups_by_rows(lengths, max_groups=4):
    """The same search over every cut between sorted rows (the first version): the reference."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    n, overhead = len(sizes), 0.1 * len(sizes) * max(sizes)
    best = [[float("inf")] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for j in range(1, n + 1):
            for i in range(g - 1, j):
                cost = best[g - 1][i] + (j - i) * sizes[j - 1] + overhead
                if cost < best[g][j]:
                    best[g][j], cut[g][j] = cost, i
    used = min(range(1, max_groups + 1), key=lambda g: best[g][n])
    bounds, j = [], n
    for g in range(used, 0, -1):
        bounds.append((cut[g][j], j))
        j = cut[g][j]
    return [order[a:b] for a, b in reversed(bounds) if b > a]


def test_length_groups_equal_the_search_over_every_cut():
    import random

    rng = random.Random(0)
    for trial in range(400):
        n = rng.randint(1, 40)
        top = rng.choice([3, 8, 30, 128])  # few distinct lengths (many ties) to many
        lengths = [rng.randint(1, top) for _ in range(n)]
        assert length_groups(lengths) == _length_groups_by_rows(lengths), lengths
