"""The command line: flags survive torchrun, `--help` is grouped for people, health nests in YAML,
and choices come from the registries."""

from __future__ import annotations

import dataclasses

import pytest

from rlhfkit.cli import COMMANDS, _load, build_parser


def all_flags(command: str) -> list[str]:
    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return [s for a in sub._actions for s in a.option_strings if s.startswith("--") and s != "--help"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_flag_is_taken_by_torchrun(command):
    # torchrun's parser sees the whole line: a flag that abbreviates two of its options is an error,
    # one that abbreviates one of them is taken as that option (`--n` was both before).
    from torch.distributed.run import get_args_parser

    launcher = get_args_parser()
    for flag in all_flags(command):
        args = launcher.parse_args(["--nproc_per_node", "2", "-m", "rlhfkit", command, flag, "1"])
        assert args.nproc_per_node == "2" and args.training_script_args == [command, flag, "1"], flag


def test_the_checker_catches_a_prefix_of_torchrun_options():
    from torch.distributed.run import get_args_parser

    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--nproc_per_node", "2", "-m", "rlhfkit", "rl", "--n", "1"])


def test_rl_help_is_grouped_core_first(capsys):
    from rlhfkit.trainers.rl_config import RLConfig

    names = [n for group in RLConfig.ARG_GROUPS.values() for n in group]
    assert len(names) == len(set(names))
    fields = [f.name for f in dataclasses.fields(RLConfig)]
    assert sorted(names + [f for f in fields if f.startswith("health_")]) == sorted(fields)  # each once
    with pytest.raises(SystemExit):
        build_parser("rl").parse_args(["rl", "--help"])
    text = capsys.readouterr().out
    assert text.index("--policy") < text.index("--prompts") < text.index("--temperature") < text.index("--health-")
    for title in RLConfig.ARG_GROUPS:
        assert f"\n{title}:\n" in text
    assert "\nrun health:\n" in text


def test_choices_come_from_the_registries():
    from rlhfkit.algos import AGG_MODES, KL_ESTIMATORS
    from rlhfkit.rollout import ENGINES
    from rlhfkit.trainers.algorithms import ALGORITHMS
    from rlhfkit.trainers.rl_config import RLConfig

    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(RLConfig)}
    assert choices["algo"] == tuple(ALGORITHMS)
    assert choices["loss_agg"] == (None, *AGG_MODES)
    assert choices["kl_estimator"] == (None, *KL_ESTIMATORS)
    assert choices["engine"] == tuple(ENGINES)


def test_health_nests_in_yaml_and_round_trips(tmp_path, tiny_dir, data_dir):
    import yaml

    from rlhfkit.config import ConfigError, build_config, load_yaml, save_config
    from rlhfkit.trainers.rl_config import RLConfig

    values = dict(policy=tiny_dir, prompts=str(data_dir / "prompts.jsonl"), output=str(tmp_path),
                  reward_fn="exact_match",
                  health={"kl_runaway": {"policy": "stop", "kl_max": 30.0}, "cooldown": 5, "stalled_window": 7})
    cfg = build_config(RLConfig, values)
    assert (cfg.health_kl_runaway_policy, cfg.health_kl_max, cfg.health_cooldown, cfg.health_stalled_window) == \
        ("stop", 30.0, 5, 7)
    saved = yaml.safe_load(save_config(cfg, tmp_path).read_text())
    assert not any(k.startswith("health_") for k in saved)
    assert saved["health"]["kl_runaway"] == {"policy": "stop", "kl_max": 30.0, "kl_window": 10, "kl_growth": 3.0,
                                             "kl_min": 2.0, "kl_rising": 0.7}
    assert saved["health"]["cooldown"] == 5 and saved["health"]["stalled"]["stalled_window"] == 7
    assert build_config(RLConfig, load_yaml(tmp_path / "config.yaml")) == cfg
    with pytest.raises(ConfigError, match="health_kl_maxx"):
        build_config(RLConfig, {**values, "health": {"kl_maxx": 1}})
    with pytest.raises(ConfigError, match="must be a mapping"):
        build_config(RLConfig, {**values, "health": 3})


def test_every_command_loads_its_config():
    for command in COMMANDS:
        cfg_cls, run = _load(command)
        assert dataclasses.is_dataclass(cfg_cls) and callable(run)


def test_boolean_flags_have_a_no_form(capsys):
    from rlhfkit.config import config_from_args
    from rlhfkit.trainers.rl_config import RLConfig

    base = ["rl", "--policy", "p", "--prompts", "x.jsonl", "--reward-fn", "exact_match", "--output", "o"]

    def parsed(*flags):
        return config_from_args(RLConfig, build_parser("rl").parse_args([*base, *flags]))

    assert parsed().padding_free is True  # the default
    assert parsed("--no-padding-free").padding_free is False
    assert parsed("--padding-free", "false").padding_free is False
    assert parsed("--no-padding-free", "--padding-free").padding_free is True  # the last flag wins
    assert parsed("--seeded-sampling").seeded_sampling is True and parsed("--no-seeded-sampling").seeded_sampling is False
    assert "--no-padding-free" in all_flags("rl")
    with pytest.raises(SystemExit):
        build_parser("rl").parse_args(["rl", "--help"])
    assert "--no-padding-free for false" in " ".join(capsys.readouterr().out.split())  # said once, in --x's help
