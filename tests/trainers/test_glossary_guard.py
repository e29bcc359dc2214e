"""The glossary stays true: what the trainers write is what rlhfkit/reporting/metrics.py says.

Short real runs (2 RL steps per algorithm of the registry, a few SFT and RM steps) on a tiny
model; then, both ways:
- every metric name and event name a run writes is defined (METRICS, EVENTS), for that stage;
- every defined name is written by some run, unless the glossary says when it is written
  (`MetricDef.when`, `EVENT_WHEN`).
And every field of every config is a flag with a description in `rlhfkit <cmd> --help`, and a
row of its stage's fields tables in the docs.
The checks are pure functions of (names seen, glossary), also run on a broken glossary below.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from rlhfkit.reporting.metrics import EVENT_WHEN, EVENTS, METRICS, MetricDef
from rlhfkit.trainers.algorithms import ALGORITHMS

# Extra RL runs that switch on the optional parts cheaply, so their conditional names are seen too.
EXTRA_RUNS = {
    "ppo-options": dict(algo="ppo", normalize_rewards=True, reward_clip=1.0, entropy_coef=0.01, ptx_coef=0.1,
                        value_clip=0.2, dual_clip=3.0, critic_warmup_steps=1, ppo_epochs=2, minibatch_size=1),
    "grpo-options": dict(algo="grpo", drop_uniform_groups=True, entropy_coef=0.01, kl_coef=0.1),
}


# ---------------------------------------------------------------- checkers (pure)

def undocumented(seen: dict[str, set[str]], metrics: dict[str, MetricDef]) -> list[str]:
    """'stage: name' for each name a stage wrote that the glossary lacks or gives to other stages."""
    return sorted(f"{stage}: {name}" for stage, names in seen.items() for name in names
                  if name not in metrics or stage not in metrics[name].stages)


def never_written(seen: dict[str, set[str]], metrics: dict[str, MetricDef]) -> list[str]:
    """Names the glossary says are always written (no `when`) that no run of their stages wrote."""
    return sorted(m.name for m in metrics.values() if not m.when
                  and not any(m.name in seen.get(stage, set()) for stage in m.stages))


def event_problems(seen: set[str], events: dict[str, str], when: dict[str, str]) -> list[str]:
    unknown = [f"emitted but not in EVENTS: {e}" for e in sorted(seen - set(events))]
    silent = [f"in EVENTS, never emitted, no condition in EVENT_WHEN: {e}" for e in events
              if e not in seen and not when.get(e)]
    stray = [f"EVENT_WHEN names an unknown event: {e}" for e in when if e not in events]
    return unknown + silent + stray


def help_problems(help_text: str, cls) -> list[str]:
    """Fields of `cls` without a `--flag` in the help, or whose help says nothing but the default."""
    out = []
    flat = " ".join(help_text.split())
    from rlhfkit.config import flag_of

    for f in dataclasses.fields(cls):
        flag = flag_of(f)  # --field-name, or the field's own spelling (--samples-per-prompt for n)
        if not re.search(re.escape(flag) + r"(?![\w-])", flat):  # --n is not --num-samples
            out.append(f"{flag}: not in --help")
        elif not f.metadata.get("help", "").strip():
            out.append(f"{flag}: no description")
    return out


# ---------------------------------------------------------------- the runs

def _rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r], {r["event"] for r in rows if "event" in r}


@pytest.fixture(scope="module")
def written(tiny_dir, data_dir, tmp_path_factory):
    """(metric names per stage, event names) written by a short run of every algorithm and stage."""
    from rlhfkit.trainers.rl import RLConfig, train_rl
    from rlhfkit.trainers.rm import RMConfig, train_rm
    from rlhfkit.trainers.sft import SFTConfig, train_sft

    root = tmp_path_factory.mktemp("glossary")
    seen: dict[str, set[str]] = {"rl": set(), "sft": set(), "rm": set(), "dpo": set()}
    events: set[str] = set()
    base = dict(policy=tiny_dir, prompts=str(data_dir / "prompts.jsonl"), steps=2, prompts_per_step=2,
                max_new_tokens=4, lr=1e-3, device="cpu", seed=0,
                reward_fn=f"{data_dir / 'reward.py'}:distinct", gold_fn=f"{data_dir / 'reward.py'}:good_fraction",
                ptx_data=str(data_dir / "sft.jsonl"))
    runs = {name: dict(algo=name) for name in ALGORITHMS} | EXTRA_RUNS
    for name, kw in runs.items():
        out = root / name
        train_rl(RLConfig(**{**base, **kw, "output": str(out)}))
        rows, evs = _rows(out)
        seen["rl"].update(k for r in rows for k in r)
        events |= evs
    common = dict(model=tiny_dir, epochs=1, batch_size=8, lr=1e-3, device="cpu", eval_fraction=0.25)
    train_sft(SFTConfig(data=str(data_dir / "sft.jsonl"), output=str(root / "sft"), **common))
    train_rm(RMConfig(data=str(data_dir / "prefs.jsonl"), output=str(root / "rm"), lm_coef=0.5, **common))
    from rlhfkit.trainers.dpo import DPOConfig, train_dpo

    train_dpo(DPOConfig(data=str(data_dir / "prefs.jsonl"), output=str(root / "dpo"), eval_kl_prompts=2,
                        eval_max_new_tokens=4, **common))
    for stage in ("sft", "rm", "dpo"):
        rows, evs = _rows(root / stage)
        seen[stage].update(k for r in rows for k in r)
        events |= evs
    return seen, events


def test_every_written_metric_is_defined_for_its_stage(written):
    seen, _ = written
    assert undocumented(seen, METRICS) == [], "define these in rlhfkit/reporting/metrics.py (METRICS)"


def test_every_defined_metric_is_written_or_says_when(written):
    seen, _ = written
    assert never_written(seen, METRICS) == [], (
        "never written by any run: remove them, or set MetricDef.when to the condition that writes them")


def test_conditional_metrics_of_the_option_runs_are_written(written):
    # The option runs switch these conditions on: the names their `when` promises do appear.
    seen, _ = written
    for name in ("reward/gold_mean", "reward/normalized_mean", "loss/kl", "loss/entropy", "loss/sft",
                 "groups/dropped_fraction", "kl/token_mean", "train/lm_loss"):
        assert any(name in names for names in seen.values()), name


def test_every_event_is_defined_and_every_defined_event_is_emitted_or_says_when(written):
    _, events = written
    assert "start" in events
    assert event_problems(events, EVENTS, EVENT_WHEN) == []


@pytest.mark.parametrize("command", ["rl", "sft", "rm", "eval"])
def test_every_config_field_is_a_described_flag_in_help(command):
    from rlhfkit.cli import _load, build_parser

    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    assert help_problems(sub.format_help(), _load(command)[0]) == []


@pytest.mark.parametrize("cls_name", ["RLConfig", "SFTConfig", "RMConfig"])
def test_every_config_field_has_a_row_in_its_docs_fields_tables(cls_name):
    # tests/test_docs.py checks a field is mentioned somewhere on its pages; here, in a table row
    # (the pages' "field | default | effect" tables). EvalConfig has no docs table, only --help.
    from tests.test_docs import STAGE_PAGES, config_classes, missing_fields

    assert missing_fields(config_classes()[cls_name], table_rows(STAGE_PAGES[cls_name])) == []


def table_rows(pages) -> str:
    return "\n".join(line for page in pages for line in page.read_text().splitlines() if line.startswith("|"))


# ---------------------------------------------------------------- the checkers can fail

def test_checkers_catch_a_broken_glossary():
    m = {"a/x": MetricDef("a/x", "d", "1", "w"), "a/y": MetricDef("a/y", "d", "1", "w", ("rl",), "y_coef > 0"),
         "b/z": MetricDef("b/z", "d", "1", "w", ("sft",))}
    seen = {"rl": {"a/x", "b/z", "a/new"}, "sft": set()}
    assert undocumented(seen, m) == ["rl: a/new", "rl: b/z"]  # unknown, and logged by the wrong stage
    assert never_written(seen, m) == ["b/z"]  # a/y is conditional; b/z is sft's and sft never wrote it
    assert never_written({"rl": {"a/x"}, "sft": {"b/z"}}, m) == []
    assert event_problems({"start", "new"}, {"start": "", "gone": "", "cond": ""}, {"cond": "c", "typo": "c"}) == [
        "emitted but not in EVENTS: new", "in EVENTS, never emitted, no condition in EVENT_WHEN: gone",
        "EVENT_WHEN names an unknown event: typo"]

    @dataclasses.dataclass
    class Cfg:
        alpha_beta: int = dataclasses.field(default=1, metadata={"help": "the alpha"})
        gamma: int = 2

    assert help_problems("usage: --alpha-beta ALPHA_BETA the alpha --gamma GAMMA", Cfg) == ["--gamma: no description"]
    assert help_problems("usage: --gamma", Cfg) == ["--alpha-beta: not in --help", "--gamma: no description"]


def test_table_rows_keep_only_tables(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("`seed` in prose\n| `lr` | 1e-6 | step size |\n")
    assert table_rows([page]) == "| `lr` | 1e-6 | step size |"
