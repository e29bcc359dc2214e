"""`rlhfkit sft | rm | rl | eval | quickstart`: flags generated from each stage's config dataclass.

Each command reads an optional YAML file (`--config`) whose keys are the config fields, then
applies the flags given on the command line, validates, saves the resolved config in the output
folder and runs. User mistakes (bad config, bad data) print one clear line, not a traceback.
"""

from __future__ import annotations

import argparse
import sys

# command -> (module, config class, run function, one-line help); imported only when used.
COMMANDS = {
    "sft": ("rlhfkit.trainers.sft", "SFTConfig", "train_sft", "supervised fine-tuning on demonstrations"),
    "rm": ("rlhfkit.trainers.rm", "RMConfig", "train_rm", "reward model from preference pairs (Bradley-Terry)"),
    "dpo": ("rlhfkit.trainers.dpo", "DPOConfig", "train_dpo", "policy from preference pairs, no reward model "
                                                              "(DPO, IPO, cDPO, SimPO)"),
    "rl": ("rlhfkit.trainers.rl", "RLConfig", "train_rl", "RL against a reward model or function (PPO, GRPO, ...)"),
    "eval": ("rlhfkit.evaluate", "EvalConfig", "run_eval", "score, KL, perplexity, length and win rate of policies"),
    "doctor": ("rlhfkit.doctor", "DoctorConfig", "run_doctor", "check a model, its data and its reward before a run"),
    "quickstart": ("rlhfkit.quickstart", "QuickstartConfig", "run_quickstart",
                   "the whole pipeline on a bundled task, on CPU, in minutes"),
    "serve-reward": ("rlhfkit.serve", "ServeRewardConfig", "run_serve",
                     "serve a reward model or function over HTTP (docs/reward-service.md)"),
}


# Short synopses: the full flag list is in the grouped sections of `--help`.
USAGE = {
    "rl": "rlhfkit rl --policy DIR --prompts FILE --output DIR (--reward-model DIR | --reward-fn FILE.py:FN | "
          "--reward-url URL[,URL:WEIGHT] | --reward-judge-url URL) [--algo NAME] [--config FILE.yaml] [options]",
}


def _load(command: str):
    import importlib

    module_name, cfg_name, fn_name, _ = COMMANDS[command]
    module = importlib.import_module(module_name)
    return getattr(module, cfg_name), getattr(module, fn_name)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    from rlhfkit import __version__
    from rlhfkit.config import add_arguments

    parser = argparse.ArgumentParser(prog="rlhfkit", description="RLHF post-training for Hugging Face causal LMs.")
    parser.add_argument("--version", action="version", version=f"rlhfkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, usage=USAGE.get(name))
        if name == command:  # only the chosen command's config (and its imports) is loaded
            cfg_cls, _ = _load(name)
            add_arguments(p, cfg_cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rlhfkit.config import ConfigError, config_from_args

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    cfg_cls, run = _load(args.command)
    try:
        cfg = config_from_args(cfg_cls, args)
        result = run(cfg)
    except ConfigError as err:
        print(f"rlhfkit {args.command}: config error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # user-facing errors get one line; real bugs keep their traceback
        from rlhfkit.data import DataError
        from rlhfkit.trainers.common import RunInterrupted, TrainingError

        if isinstance(err, DataError):
            print(f"rlhfkit {args.command}: data error: {err}", file=sys.stderr)
            return 2
        if isinstance(err, TrainingError):
            print(f"rlhfkit {args.command}: stopped: {err}", file=sys.stderr)
            return 1
        if isinstance(err, RunInterrupted):
            print(f"rlhfkit {args.command}: {err}", file=sys.stderr)
            return err.exit_code
        raise
    if isinstance(result, int) and not isinstance(result, bool):  # a command with its own exit status (doctor)
        return result
    from rlhfkit.trainers.distributed import finish, world

    if isinstance(result, dict) and "final" in result and world().main:
        print(f"rlhfkit {args.command}: done; model saved in {result['final']}")
    finish()  # leave the process group of a torchrun launch (no-op otherwise)
    return 0


if __name__ == "__main__":
    sys.exit(main())
