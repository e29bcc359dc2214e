"""Waste: the share of token positions a model computes that no result needs.

Counted from what the models actually receive, the same way whatever the engine or update code:
a forward pre-hook on each model's input-embedding module (every forward of an HF model, through
any wrapper, embeds its `input_ids` there) adds, per call,

- fed: `input_ids.numel()`, the positions the model computes;
- needed: the fed positions that carry a real token:
  * update passes (every forward outside generation: policy forward for the loss, reference,
    critic and reward-model forwards, rollout or update): tokens that are not the pad id. Prompts
    are left-padded and responses right-padded with the pad id after their EOS, so these are the
    valid prompt tokens plus the response tokens up to and including the EOS; a packed
    (padding-free) batch has no pad and counts as all needed;
  * generation (calls while the engine's `generate` runs): the first call of a `generate`, and any
    later call that feeds more than one token per row (the native engine prefills prompts in groups
    of similar length), is prefill (needed: its non-pad tokens); every other call is decoding, where a fed position is
    needed only if its token is neither pad nor EOS: HF `generate` feeds the pad id to rows that
    have finished, and the EOS fed one step after a row sampled it computes logits no one uses.
    A row that was dropped from the batch is not fed, so it costs nothing.

waste = 1 - needed / fed, per phase (prefill, decode, update) and per model. It needs pad != EOS
and prompts without EOS or pad tokens (bench/workload.py builds them so). An engine that feeds
`inputs_embeds` instead of ids, or interleaves prefills with decoding (continuous batching), is
counted by the width of each call: the total generation figure stays exact, the prefill / decode
split may not.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import torch

PHASES = ("prefill", "decode", "update")


def input_embedding(model) -> torch.nn.Module:
    """The module that embeds a model's input ids: `get_input_embeddings()`, through a `.backbone` (our scalar
    heads) or a peft wrapper; else the first `nn.Embedding` inside."""
    for candidate in (model, getattr(model, "backbone", None)):
        get = getattr(candidate, "get_input_embeddings", None)
        if get is not None:
            emb = get()
            if emb is not None:
                return emb
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            return module
    raise ValueError(f"no input embedding found in {type(model).__name__}")


class WasteCounter:
    """Fed and needed positions per (phase, model name), counted by hooks on the models' input embeddings."""

    def __init__(self, pad_id: int, eos_id: int):
        if pad_id == eos_id:
            raise ValueError("waste counting needs pad_id != eos_id (a pad fed to a finished row would look like EOS)")
        self.pad_id, self.eos_id = pad_id, eos_id
        self.fed = defaultdict(int)  # (phase, model) -> positions fed
        self.needed = defaultdict(int)  # (phase, model) -> positions needed
        self.generating = False
        self._calls_in_generate = 0
        self._hooked: dict[int, str] = {}  # id(embedding module) -> model name
        self._handles = []

    def attach(self, model, name: str) -> None:
        """Count every forward of `model` under `name` (a model shared by two names counts under the first)."""
        emb = input_embedding(model)
        if id(emb) in self._hooked:
            return
        self._hooked[id(emb)] = name
        self._handles.append(emb.register_forward_pre_hook(lambda module, args: self._count(name, args[0])))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._hooked.clear()

    @contextmanager
    def generation(self):
        """Calls inside are generation: the first is the prefill, the rest decoding."""
        self.generating, self._calls_in_generate = True, 0
        try:
            yield
        finally:
            self.generating = False

    def wrap_generate(self, fn):
        """fn (an engine's or model's generate) counted as generation."""
        def wrapper(*args, **kwargs):
            with self.generation():
                return fn(*args, **kwargs)
        wrapper.__wrapped__ = fn
        return wrapper

    def _count(self, name: str, ids) -> None:
        if not torch.is_tensor(ids):
            return
        real = ids != self.pad_id
        if self.generating:
            # a prefill feeds whole prompts (the native engine prefills groups of similar length: several calls);
            # a decode step feeds one token per running row
            phase = "prefill" if self._calls_in_generate == 0 or ids.shape[-1] > 1 else "decode"
            self._calls_in_generate += 1
            if phase == "decode":
                real = real & (ids != self.eos_id)
        else:
            phase = "update"
        self.fed[phase, name] += ids.numel()
        self.needed[phase, name] += int(real.sum())

    def reset(self) -> None:
        self.fed.clear()
        self.needed.clear()

    def snapshot(self) -> dict:
        """{"fed": {phase/model: n}, "needed": {...}} of the counts so far (JSON-ready)."""
        return {"fed": {f"{p}/{m}": v for (p, m), v in self.fed.items()},
                "needed": {f"{p}/{m}": v for (p, m), v in self.needed.items()}}


def waste(fed: int, needed: int) -> float:
    """1 - needed / fed (nan when nothing was fed)."""
    return 1.0 - needed / fed if fed else float("nan")


def summarize(snapshots: list[dict]) -> dict:
    """Totals over steps: {"generation", "prefill", "decode", "update", "update/<model>", ...}: waste fractions,
    plus "fed" and "needed" position counts per key (sums over the given snapshots)."""
    fed, needed = defaultdict(int), defaultdict(int)
    for snap in snapshots:
        for key, v in snap["fed"].items():
            phase, model = key.split("/", 1)
            groups = [phase, key] + (["generation"] if phase in ("prefill", "decode") else [])
            for g in groups:
                fed[g] += v
                needed[g] += snap["needed"].get(key, 0)
    return {"waste": {k: waste(fed[k], needed[k]) for k in fed}, "fed": dict(fed), "needed": dict(needed)}


def format_summary(s: dict) -> str:
    w = s["waste"]

    def pct(k):
        return f"{100 * w[k]:.1f}%" if k in w else "-"
    per_model = ", ".join(f"{k.split('/', 1)[1]} {pct(k)}" for k in sorted(w) if k.startswith("update/"))
    return (f"waste: generation {pct('generation')} (prefill {pct('prefill')}, decode {pct('decode')}); "
            f"update passes {pct('update')} ({per_model})")


def instrument_train_rl(counter: WasteCounter, on_generate=None):
    """Count the waste of `train_rl` (run unchanged): hooks on every model `build_models` returns (policy,
    reference, critic, the scorer's reward model), and the engine's `generate` marked as generation.
    on_generate: optional wrapper applied to the engine's generate inside the counting (a timer).
    Returns a function that puts rl_setup back as it was (the hooks stay on the models built meanwhile)."""
    import rlhfkit.trainers.rl_setup as setup

    make_engine, build_models = setup.make_engine, setup.build_models

    def make_counted_engine(*args, **kwargs):
        engine = make_engine(*args, **kwargs)
        generate = engine.generate if on_generate is None else on_generate(engine.generate)
        engine.generate = counter.wrap_generate(generate)
        return engine

    def build_hooked_models(*args, **kwargs):
        models = build_models(*args, **kwargs)
        rm = getattr(models.scorer, "reward_model", None)
        for model, name in ((models.policy, "policy"), (models.reference, "reference"), (models.critic, "critic"),
                            (rm, "reward_model")):
            if isinstance(model, torch.nn.Module):
                counter.attach(model, name)
        return models

    setup.make_engine, setup.build_models = make_counted_engine, build_hooked_models

    def undo():
        setup.make_engine, setup.build_models = make_engine, build_models
    return undo
