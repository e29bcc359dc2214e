"""Tests of the benchmarks' measuring code (not part of the suite: `pytest bench/test_waste.py`).

The waste counter (bench/waste.py) against counts derived independently from the batches that
generation returns, and the realistic workload's length and prompt distributions.
"""

from __future__ import annotations

import os
import random
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import waste  # noqa: E402
import workload  # noqa: E402

torch.set_num_threads(1)
PAD, EOS = 0, 1


@pytest.fixture(scope="module")
def tiny():
    from rlhfkit.models.tiny import build_tiny_model, build_tiny_tokenizer

    tok = build_tiny_tokenizer([" ".join(f"w{i}" for i in range(60))])
    assert (tok.pad_token_id, tok.eos_token_id) == (PAD, EOS)
    return tok, build_tiny_model(tok, seed=0, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def test_update_pass_counts_pads_by_hand(tiny):
    tok, model = tiny
    counter = waste.WasteCounter(PAD, EOS)
    counter.attach(model, "policy")
    ids = torch.tensor([[PAD, PAD, 5, 6, 7, EOS, PAD, PAD],  # 2 left pads, 2 right pads after EOS
                        [5, 6, 7, 8, 9, 10, 11, EOS]])  # nothing wasted
    with torch.no_grad():
        model(input_ids=ids, attention_mask=(ids != PAD).long())
    assert counter.fed["update", "policy"] == 16
    assert counter.needed["update", "policy"] == 12
    s = waste.summarize([counter.snapshot()])
    assert s["waste"]["update"] == pytest.approx(4 / 16)
    assert "generation" not in s["waste"]
    counter.detach()
    with torch.no_grad():
        model(input_ids=ids)
    assert counter.fed["update", "policy"] == 16  # detached: no longer counted


def test_generation_counts_match_the_returned_masks(tiny):
    """Through rlhfkit's HF engine: prefill needed = valid prompt tokens; decode needed = response tokens
    sampled before each row's EOS = sum(lengths) - N (the first token comes from the prefill); decode fed =
    N x (R - 1) for R generated columns."""
    from rlhfkit.rollout.engine import HFEngine
    from rlhfkit.rollout.generation import GenerationSettings

    tok, model = tiny
    bias = torch.zeros(len(tok))
    bias[EOS] = 4.0  # EOS likely enough that rows finish at different steps
    bias[PAD] = float("-inf")  # a sampled pad id would count as waste (bench/waste.py)
    handle = model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    counter = waste.WasteCounter(PAD, EOS)
    counter.attach(model, "policy")
    engine = HFEngine(model, tok)
    engine.generate = counter.wrap_generate(engine.generate)
    torch.manual_seed(0)
    prompts = ["w1 w2", "w3 w4 w5 w6 w7", "w8", "w9 w10 w11"]
    gen = engine.generate(prompts, GenerationSettings(max_new_tokens=24, n=3, temperature=1.0))
    handle.remove()
    lengths = gen.response_mask.sum(1)
    n, r = gen.response_ids.shape
    assert gen.eos.any() and (lengths < r).any(), "the test needs rows that finish early"
    assert counter.fed["prefill", "policy"] == gen.prompt_ids.numel()
    assert counter.needed["prefill", "policy"] == int(gen.prompt_mask.sum())
    assert counter.fed["decode", "policy"] == n * (r - 1)
    assert counter.needed["decode", "policy"] == int(lengths.sum()) - n
    s = waste.summarize([counter.snapshot()])
    fed = gen.prompt_ids.numel() + n * (r - 1)
    assert s["waste"]["generation"] == pytest.approx(1 - (int(gen.prompt_mask.sum()) + int(lengths.sum()) - n) / fed)
    assert "update" not in s["waste"]


def test_update_passes_of_make_experience(tiny):
    """The reference and critic forwards after generation: needed = valid prompt + response tokens per pass."""
    from rlhfkit.models.scalar_head import ScalarHeadModel
    from rlhfkit.models.tiny import build_tiny_classifier, build_tiny_model
    from rlhfkit.rollout.collect import make_experience
    from rlhfkit.rollout.engine import HFEngine
    from rlhfkit.rollout.generation import GenerationSettings

    tok, model = tiny
    # A sampled pad id would count as waste (bench/waste.py): keep this random model from sampling it.
    bias = torch.zeros(len(tok))
    bias[PAD] = float("-inf")
    handle = model.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    reference = build_tiny_model(tok, seed=1, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    critic = ScalarHeadModel(build_tiny_classifier(tok, seed=2, hidden_size=32, num_layers=1, num_heads=2,
                                                   intermediate_size=64))
    counter = waste.WasteCounter(PAD, EOS)
    for m, name in ((model, "policy"), (reference, "reference"), (critic, "critic")):
        counter.attach(m, name)
    engine = HFEngine(model, tok)
    engine.generate = counter.wrap_generate(engine.generate)
    torch.manual_seed(1)
    exp = make_experience(model, tok, ["w1 w2", "w3 w4 w5 w6"], GenerationSettings(max_new_tokens=6, n=2),
                          reference=reference, critic=critic, engine=engine)
    handle.remove()
    valid = int(exp.prompt_mask.sum()) + int(exp.response_mask.sum())
    for name in ("reference", "critic"):
        assert counter.fed["update", name] == exp.input_ids.numel()
        assert counter.needed["update", name] == valid
    assert ("update", "policy") not in counter.fed  # float32: the rollout logprobs come from generate's logits


def test_counter_refuses_pad_equal_to_eos():
    with pytest.raises(ValueError, match="pad_id != eos_id"):
        waste.WasteCounter(3, 3)


def test_summarize_sums_steps_and_phases():
    snaps = [{"fed": {"prefill/policy": 10, "decode/policy": 30, "update/reference": 40},
              "needed": {"prefill/policy": 8, "decode/policy": 15, "update/reference": 30}},
             {"fed": {"update/reference": 60, "update/critic": 100}, "needed": {"update/reference": 60,
                                                                              "update/critic": 50}}]
    s = waste.summarize(snaps)
    assert s["waste"]["generation"] == pytest.approx(1 - 23 / 40)
    assert s["waste"]["decode"] == pytest.approx(0.5)
    assert s["waste"]["update/reference"] == pytest.approx(0.1)
    assert s["waste"]["update"] == pytest.approx(1 - 140 / 200)


def test_prompt_lengths_cover_the_range_log_uniformly():
    xs = workload.prompt_lengths(4000, seed=0)
    assert min(xs) == 16 and max(xs) == 128
    # log-uniform: as many prompts in [16, 45) as in [45, 128] (log 45 is about the middle of log 16..129)
    short = sum(x < 45 for x in xs) / len(xs)
    assert 0.45 < short < 0.55


def test_response_lengths_are_geometric_with_the_wanted_mean():
    rng = random.Random(0)
    xs = [workload.response_length(rng) for _ in range(20000)]
    assert 1 <= min(xs) and max(xs) <= workload.MAX_NEW_TOKENS - 1
    assert sum(xs) / len(xs) == pytest.approx(workload.RESPONSE_MEAN, rel=0.03)
    assert sum(xs) / len(xs) + 1 <= workload.MAX_NEW_TOKENS / 3  # with the EOS, the mean the issue allows


def test_length_stats_by_hand():
    s = workload.length_stats([1, 2, 3, 4, 10, 5, 6, 7, 8, 9], eos=[True] * 9 + [False])
    assert s == {"rows": 10, "mean": 5.5, "p50": 6, "p90": 10, "max": 10, "eos_share": 0.9}


def test_train_rl_instrumented_counts_every_model(tmp_path):
    """A PPO step of train_rl (unchanged) with the bench's hooks: every model's update passes need exactly the
    valid prompt + response tokens of the step's batch, once per pass (critic: rollout and update)."""
    import common

    from rlhfkit.trainers.rl import train_rl

    paths = common.build("tiny", str(tmp_path / "models"))
    counter = waste.WasteCounter(PAD, EOS)
    batches = []

    def keep(generate):
        def wrapper(*args, **kwargs):
            batches.append(generate(*args, **kwargs))
            return batches[-1]
        return wrapper

    undo = waste.instrument_train_rl(counter, on_generate=keep)
    try:
        train_rl(common.rl_config("ppo", paths, str(tmp_path / "run"), 1,
                                  {"prompts_per_step": 3, "n": 1, "max_new_tokens": 6},
                                  {"padding_free": False, "engine": "hf"}))  # padded: counts derivable by hand
    finally:
        undo()
    (gen,) = batches
    valid = int(gen.prompt_mask.sum()) + int(gen.response_mask.sum())
    fed = gen.prompt_ids.numel() + gen.response_ids.numel()
    passes = {"policy": 1, "reference": 1, "critic": 2, "reward_model": 1}
    for name, k in passes.items():
        assert counter.fed["update", name] == k * fed, name
        assert counter.needed["update", name] == k * valid, name
    n, r = gen.response_ids.shape
    assert counter.needed["decode", "policy"] == int(gen.response_mask.sum()) - n


def test_pass_through_options_only_when_given_and_only_to_existing_fields():
    import argparse
    import dataclasses

    from rlhfkit.trainers.rl_config import RLConfig

    parser = argparse.ArgumentParser()
    workload.add_arguments(parser)
    assert workload.overrides(parser.parse_args([])) == {}  # nothing given: RLConfig's defaults stand
    assert workload.overrides(parser.parse_args(["--engine", "hf"])) == {"engine": "hf"}
    fields = {f.name for f in dataclasses.fields(RLConfig)}
    for argv, field, value in ((["--micro-batch-tokens", "256"], "micro_batch_tokens", 256),
                               (["--no-padding-free"], "padding_free", False)):
        if field in fields:
            assert workload.overrides(parser.parse_args(argv)) == {field: value}
        else:
            with pytest.raises(SystemExit, match=f"RLConfig.{field}"):
                workload.overrides(parser.parse_args(argv))
