"""The docs stay in step with the code.

- every field of `RLConfig`, `SFTConfig`, `RMConfig` is named (as `field` or --field) on its stage's pages;
- every algorithm of `ALGORITHMS` has a row in docs/rl/README.md linking to a page that shows `--algo NAME`;
- every `rlhfkit ...` command, `*Config(...)` call and YAML config in those pages builds a valid config;
- every backticked metric name is defined in `rlhfkit.reporting.metrics.METRICS`;
- every relative link (and #anchor) in those pages resolves.
Each checker is also run on a small broken text, to show it can fail.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import shlex
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
RL_DOCS = DOCS / "rl"
STAGE_PAGES = {"RLConfig": sorted(RL_DOCS.glob("*.md")) + [DOCS / "health" / "README.md"], "SFTConfig": [DOCS / "sft.md"],
               "RMConfig": [DOCS / "reward-model.md"]}
OWN_PAGES = sorted(RL_DOCS.glob("*.md")) + [DOCS / "sft.md", DOCS / "reward-model.md"]
COMMANDS = {"rl": "RLConfig", "sft": "SFTConfig", "rm": "RMConfig"}
METRIC_NAMESPACES = ("reward", "kl", "policy", "loss", "value", "advantages", "returns", "response", "grad",
                     "time", "prime", "groups", "train", "eval", "data", "trpo")


def config_classes() -> dict:
    from rlhfkit.trainers.rl_config import RLConfig
    from rlhfkit.trainers.rm import RMConfig
    from rlhfkit.trainers.sft import SFTConfig

    return {"RLConfig": RLConfig, "SFTConfig": SFTConfig, "RMConfig": RMConfig}


# ---------------------------------------------------------------- checkers (pure: text in, problems out)

def mentions(text: str, field: str, flag: str | None = None) -> bool:
    """True when `field` appears in backticks or as its flag (--field-name unless the field names its
    own), not as a prefix of a longer flag."""
    flag = flag or "--" + field.replace("_", "-")
    return f"`{field}`" in text or re.search(re.escape(flag) + r"(?![\w-])", text) is not None


def missing_fields(cls, text: str) -> list[str]:
    from rlhfkit.config import flag_of

    return [f.name for f in dataclasses.fields(cls) if not mentions(text, f.name, flag_of(f))]


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def algo_shown(text: str, name: str) -> bool:
    """The page shows `--algo NAME` exactly (`--algo reinforce` does not match `--algo reinforce++`)."""
    return re.search(r"--algo\s+" + re.escape(name) + r"(?![\w+-])", text) is not None


def unlinked_algorithms(names, readme: str, base: Path) -> list[str]:
    """Algorithms without a README line naming `name` that links to an existing page showing `--algo name`."""
    bad = []
    for name in names:
        ok = False
        for line in readme.splitlines():
            if f"`{name}`" not in line:
                continue
            for target in LINK.findall(line):
                page = base / target.split("#")[0]
                if target.endswith(".md") and page.is_file() and algo_shown(page.read_text(), name):
                    ok = True
        if not ok:
            bad.append(name)
    return bad


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(r"^```" + lang + r"\n(.*?)^```", text, flags=re.S | re.M)


def cli_commands(text: str) -> list[list[str]]:
    """argv lists of every `rlhfkit rl|sft|rm ...` line in bash blocks (backslash continuations joined)."""
    out = []
    for block in code_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if len(argv) >= 2 and argv[0] == "rlhfkit" and argv[1] in COMMANDS:
                out.append(argv[1:])
    return out


def invalid_commands(text: str) -> list[str]:
    from rlhfkit.cli import build_parser
    from rlhfkit.config import ConfigError, config_from_args

    bad = []
    for argv in cli_commands(text):
        try:
            args = build_parser(argv[0]).parse_args(argv)
            config_from_args(config_classes()[COMMANDS[argv[0]]], args)
        except (SystemExit, ConfigError) as err:
            bad.append(f"rlhfkit {' '.join(argv)}: {err}")
    return bad


def invalid_python_configs(text: str) -> list[str]:
    """`RLConfig(...)`-style calls in python blocks that do not parse or do not validate."""
    from rlhfkit.config import ConfigError

    classes, bad = config_classes(), []
    for block in code_blocks(text, "python"):
        try:
            tree = ast.parse(block)
        except SyntaxError as err:
            bad.append(f"python block does not parse: {err}")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes:
                try:
                    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
                    if node.args:
                        raise ValueError("positional arguments")
                    classes[node.func.id](**kwargs)
                except (ValueError, TypeError, ConfigError) as err:
                    bad.append(f"{node.func.id}(...) at line {node.lineno}: {err}")
    return bad


def invalid_yaml_configs(text: str) -> list[str]:
    """YAML blocks that are not a valid config of any stage."""
    import yaml

    from rlhfkit.config import ConfigError, build_config

    bad = []
    for block in code_blocks(text, "yaml"):
        data = yaml.safe_load(block)
        errors = []
        for cls in config_classes().values():
            try:
                build_config(cls, dict(data))
                break
            except (ConfigError, TypeError, ValueError) as err:
                errors.append(str(err))
        else:
            bad.append(f"YAML block {str(data)[:60]}...: {errors[0]}")
    return bad


def unknown_metrics(text: str) -> list[str]:
    from rlhfkit.reporting.metrics import METRICS

    names = re.findall(r"`((?:" + "|".join(METRIC_NAMESPACES) + r")/[a-z_]+)`", text)
    return sorted({n for n in names if n not in METRICS})


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def broken_links(text: str, base: Path) -> list[str]:
    bad = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        page = (base / path) if path else None
        if page is not None and not page.exists():
            bad.append(target)
            continue
        if anchor:
            source = page.read_text() if page is not None else text
            headings = [slug(h) for h in re.findall(r"^#+\s+(.*)$", source, flags=re.M)]
            if anchor not in headings:
                bad.append(target)
    return bad


# ---------------------------------------------------------------- the docs as they are

def read(pages) -> str:
    missing = [str(p) for p in pages if not p.is_file()]
    assert not missing, f"missing docs pages: {missing}"
    return "\n".join(p.read_text() for p in pages)


@pytest.mark.parametrize("cls_name", sorted(STAGE_PAGES))
def test_every_config_field_is_documented(cls_name):
    pages = STAGE_PAGES[cls_name]
    assert pages, f"no docs pages for {cls_name}"
    missing = missing_fields(config_classes()[cls_name], read(pages))
    assert not missing, (f"{cls_name} fields not mentioned (as `field` or --flag) in "
                         f"{', '.join(p.name for p in pages)}: {missing}")


def test_every_algorithm_has_a_linked_page():
    from rlhfkit.trainers.algorithms import ALGORITHMS

    readme = read([RL_DOCS / "README.md"])
    missing = unlinked_algorithms(sorted(ALGORITHMS), readme, RL_DOCS)
    assert not missing, f"algorithms without a page linked from docs/rl/README.md: {missing}"


@pytest.mark.parametrize("page", OWN_PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_examples_build_valid_configs(page):
    text = read([page])
    problems = invalid_commands(text) + invalid_python_configs(text) + invalid_yaml_configs(text)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", OWN_PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_metric_names_and_links_resolve(page):
    text = read([page])
    assert not unknown_metrics(text), f"{page.name}: undefined metrics {unknown_metrics(text)}"
    assert not broken_links(text, page.parent), f"{page.name}: broken links {broken_links(text, page.parent)}"


def test_algorithm_pages_have_cli_and_python_examples():
    from rlhfkit.trainers.algorithms import ALGORITHMS

    readme = read([RL_DOCS / "README.md"])
    for name in ALGORITHMS:
        pages = {RL_DOCS / t.split("#")[0] for line in readme.splitlines() if f"`{name}`" in line
                 for t in LINK.findall(line) if t.endswith(".md")}
        texts = [p.read_text() for p in pages if p.is_file()]
        assert any(any(argv[:3] == ["rl", "--algo", name] for argv in cli_commands(t)) for t in texts), name
        assert any(re.search(r'RLConfig\(\s*algo="' + re.escape(name) + '"', t) for t in texts), name


# ---------------------------------------------------------------- the checkers catch broken docs

def test_checkers_catch_broken_docs(tmp_path):
    from rlhfkit.trainers.rl_config import RLConfig

    # a bare word is not a mention; a longer flag is not the field's flag
    assert "n" in missing_fields(RLConfig, "sample n responses with --n-best 3")
    assert "n" not in missing_fields(RLConfig, "sample `n` responses")
    assert "kl_coef" not in missing_fields(RLConfig, "rlhfkit rl --kl-coef 0.1")
    # a README row must link to a page that shows exactly `--algo NAME`
    (tmp_path / "a.md").write_text("rlhfkit rl --algo reinforce++ ...")
    readme = "| `reinforce` | [a](a.md) |\n| `reinforce++` | [a](a.md) |\n| `grpo` | [gone](gone.md) |"
    assert unlinked_algorithms(["reinforce", "reinforce++", "grpo", "ppo"], readme, tmp_path) == [
        "reinforce", "grpo", "ppo"]
    # examples that do not build a config
    bad_cli = "```bash\nrlhfkit rl --algo grpo --policy p --prompts q --output o --reward-fn f.py:g --n 1\n```\n"
    assert invalid_commands(bad_cli)  # grpo needs n >= 2
    assert invalid_commands(bad_cli.replace("--n 1", "--kl-cof 0.1"))  # no such flag
    assert invalid_python_configs('```python\nRLConfig(algo="ppo", policy="p", prompts="q", output="o")\n```\n')
    assert invalid_yaml_configs("```yaml\nalgo: ppo\nwhiten: true\n```\n")
    assert unknown_metrics("watch `kl/mean` and `policy/entropy_mean`") == ["policy/entropy_mean"]
    (tmp_path / "b.md").write_text("# Title here\n")
    assert broken_links("[x](b.md#title-here) [y](b.md#nope) [z](c.md)", tmp_path) == ["b.md#nope", "c.md"]
