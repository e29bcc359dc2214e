"""Dataclass configs <-> YAML files <-> command-line flags.

One dataclass per entry point (`SFTConfig`, `RMConfig`, `RLConfig`, ...). Each field carries its
help text in `metadata["help"]`; the CLI flags and the YAML keys are generated from the fields
(1:1, `kl_coef` <-> `--kl-coef`), and the resolved config is saved with every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Union


from rlhfkit.errors import ConfigError  # noqa: F401  (re-exported: the config layer's error)


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
           choices: tuple | None = None, aliases: tuple[str, ...] = (), flag: str | None = None,
           group: str | None = None, append: bool = False):
    """A dataclass field with its help text (and allowed values) for the CLI and docs.

    flag: the command-line spelling when it is not `--field-name` (e.g. "--samples-per-prompt" for
    `n`: torchrun would read `--n` as an abbreviation of its own options); aliases: extra spellings;
    group: the `--help` section (see `add_arguments`); append: a repeatable flag (`--x a --x b`)."""
    meta = {"help": help, "choices": choices, "aliases": tuple(aliases), "flag": flag, "group": group,
            "append": append}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_optional) for `X`, `X | None`, `Optional[X]`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _convert(value: Any, tp: Any, name: str) -> Any:
    """Coerce a YAML or CLI value to the field's annotated type, or raise ConfigError."""
    inner, optional = _base_type(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ConfigError(f"config field '{name}' cannot be empty (null)")
    origin = typing.get_origin(inner)
    try:
        if origin in (list, tuple) or inner in (list, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            args = typing.get_args(inner)
            item_tp = args[0] if args else str
            items = [_convert(v.strip() if isinstance(v, str) else v, item_tp, name) for v in items if v != ""]
            return tuple(items) if (origin is tuple or inner is tuple) else items
        if inner is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if inner is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if inner is float:
            return float(value)
        if inner is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config field '{name}' expects {getattr(inner, '__name__', inner)}, got {value!r}") from None
    return value


def _fields(cls) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def build_config(cls, values: dict[str, Any], source: str = "config"):
    """Instantiate `cls` from a plain dict, naming unknown keys and bad values."""
    fields = _fields(cls)
    if hasattr(cls, "flatten_values"):  # nested YAML sections (e.g. RLConfig's `health:`) -> flat fields
        values = cls.flatten_values(values, source)
    unknown = [k for k in values if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{source}: unknown field '{key}' for {cls.__name__}.{hint} "
                          f"Run with --help to list the fields.")
    kwargs = {k: _convert(v, fields[k][1], k) for k, v in values.items()}
    missing = [n for n, (f, _) in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise ConfigError(f"{cls.__name__}: missing required value(s) {flags} (on the command line or in the YAML file)")
    return cls(**kwargs)


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping of field -> value; errors name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of field: value, got {type(data).__name__}")
    return data


def to_dict(cfg) -> dict[str, Any]:
    """The config as plain YAML-able values (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return cfg.nest_values(out) if hasattr(cfg, "nest_values") else out


def save_config(cfg, out_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved config as YAML (atomically) into `out_dir`."""
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, out / name)
    return out / name


def flag_of(f: dataclasses.Field) -> str:
    """The command-line flag of a config field: `--field-name` unless the field names its own."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _groups(parser: argparse.ArgumentParser, cls) -> list[tuple[str, object]]:
    """(field name, argparse group or the parser) in `--help` order. A config class may list
    `ARG_GROUPS = {title: (field, ...)}` (in order; the first holds the fields a run cannot do
    without); a field may also name its group (`option(group=...)`, after the listed ones). Fields in
    no group come last, in the parser's own section."""
    titles = dict(getattr(cls, "ARG_GROUPS", {}))
    fields = dataclasses.fields(cls)
    for f in fields:
        title = f.metadata.get("group")
        if title and title not in titles:
            titles[title] = ()
    members = {title: list(names) for title, names in titles.items()}
    for f in fields:
        if f.metadata.get("group"):
            members[f.metadata["group"]].append(f.name)
    order = []
    for title, names in members.items():
        group = parser.add_argument_group(title)
        order += [(name, group) for name in names]
    placed = {name for name, _ in order}
    return order + [(f.name, parser) for f in fields if f.name not in placed]


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One `--field-name` flag per field, grouped for `--help`; unset flags stay absent (so YAML values
    survive)."""
    parser.add_argument("--config", help="YAML file with field: value pairs; flags override it")
    fields = _fields(cls)
    for name, target in _groups(parser, cls):
        f, tp = fields[name]
        inner, _ = _base_type(tp)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_text = f.metadata.get("help", "")
        help_text += " (required)" if required else f" (default: {default})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": name}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if f.metadata.get("append"):  # a repeatable flag: --data a --data b
            kwargs["action"] = "append"
        flags = [flag_of(f), *f.metadata.get("aliases", ())]
        if inner is bool:  # --x, --x true|false, and --no-x
            off = "--no-" + flags[0][2:]
            kwargs["help"] = help_text + f"; {off} for false"
            target.add_argument(*flags, nargs="?", const="true", metavar="BOOL", **kwargs)
            target.add_argument(off, action="store_const", const="false", dest=name, default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
        else:
            target.add_argument(*flags, metavar=name.upper(), **kwargs)


def config_from_args(cls, args: argparse.Namespace):
    """YAML file (if --config) updated by the flags given, validated into `cls`."""
    values = dict(vars(args))
    config_path = values.pop("config", None)
    values.pop("command", None)
    values.pop("func", None)
    base = load_yaml(config_path) if config_path else {}
    base.update(values)
    return build_config(cls, base, source=config_path or "command line")


def field_docs(cls) -> list[tuple[str, str, str]]:
    """(name, default, help) for every field: used by the docs and `--help`."""
    rows = []
    for name, (f, _) in _fields(cls).items():
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        rows.append((name, repr(default), f.metadata.get("help", "")))
    return rows
