"""The package keeps its shape: imports point one way, no module cycles, files and functions stay readable.

Every `import` counts, also those inside functions (an import hidden in a function to dodge a
cycle is still a cycle). Each rule is also run on a small broken example, to show it can fail.
"""

from __future__ import annotations

import ast

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rlhfkit"

# The dependency arrow: a module may import from its own part or from a part of lower rank.
# algos <- models <- data, rollout <- trainers <- cli (STYLE / CONTRIBUTING.md); errors and config
# are the base every layer may raise from; reporting and tasks sit beside data and rollout.
RANKS = {"errors": 0, "algos": 1, "config": 1, "winrate": 1, "models": 2, "data": 3, "rollout": 3, "reporting": 3,
         "tasks": 3, "trainers": 4, "judging": 4, "review": 4, "evaluate": 5, "doctor": 5, "serve": 5, "quickstart": 6, "cli": 7,
         "__main__": 8, "(root)": 0}
# Parts of the same rank that must not import each other (rollout renders chats with data's templates;
# data never imports rollout).
APART = {("data", "rollout"), ("tasks", "rollout"), ("tasks", "data")}

MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
# name -> why it may stay long (each entry must still be over the limit: see the test).
LONG_FUNCTIONS = {
    "rlhfkit/algos/trpo.py:trpo_step": "TRPO appendix C as one readable sequence: CG, step size, line search",
    "rlhfkit/trainers/supervised.py:run_supervised": "the SFT/RM loop; its split follows the RL one (not yet done)",
}
LONG_FILES: dict[str, str] = {
    "rlhfkit/reporting/metrics.py": "the glossary: one table of definitions (data, not logic), defined once",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "(root)"


def imports_of(source: str, modules: set[str]) -> set[str]:
    """The rlhfkit modules a source imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the submodule; `from pkg import name` the package itself
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n in modules}
    return out


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    modules = set(sources)
    return {m: imports_of(src, modules) - {m} for m, src in sources.items()}


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for a, targets in graph.items():
        for b in targets:
            pa, pb = part(a), part(b)
            if pa == pb:
                continue
            if RANKS.get(pb, 99) > RANKS.get(pa, -1) or (pa, pb) in APART:
                bad.append(f"{a} imports {b}")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def long_functions(sources: dict[str, str]) -> dict[str, int]:
    out = {}
    for path, src in sources.items():
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out[f"{path}:{node.name}"] = n
    return out


def package_sources() -> dict[Path, str]:
    return {p: p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def rel(p: Path) -> str:
    return str(p.relative_to(PACKAGE.parent))


def test_imports_point_one_way():
    graph = import_graph({module_name(p): s for p, s in package_sources().items()})
    assert layering_violations(graph) == []


def test_no_import_cycles():
    graph = import_graph({module_name(p): s for p, s in package_sources().items()})
    assert cycles(graph) == []


def test_files_and_functions_stay_readable():
    sources = package_sources()
    big = {rel(p): s.count("\n") for p, s in sources.items() if s.count("\n") > MAX_FILE_LINES}
    assert set(big) <= set(LONG_FILES), f"files over {MAX_FILE_LINES} lines (split them, or allow-list why): {big}"
    long = long_functions({rel(p): s for p, s in sources.items()})
    assert set(long) <= set(LONG_FUNCTIONS), f"functions over {MAX_FUNCTION_LINES} lines: " \
        f"{ {k: v for k, v in long.items() if k not in LONG_FUNCTIONS} }"
    assert set(LONG_FUNCTIONS) <= set(long), f"allow-list entries no longer needed: {set(LONG_FUNCTIONS) - set(long)}"
    assert not any(k.startswith("rlhfkit/trainers/rl") for k in long)  # the RL loop reads in a screen


def test_the_rules_catch_broken_code():
    sources = {
        "rlhfkit.algos.a": "from rlhfkit.trainers.b import x\n",  # math importing the trainer
        "rlhfkit.trainers.b": "def f():\n    from rlhfkit.trainers.c import y\n",  # hidden in a function
        "rlhfkit.trainers.c": "import rlhfkit.trainers.b\n",
        "rlhfkit.data.d": "from rlhfkit.rollout.e import z\n",
        "rlhfkit.rollout.e": "",
    }
    graph = import_graph(sources)
    assert layering_violations(graph) == ["rlhfkit.algos.a imports rlhfkit.trainers.b",
                                          "rlhfkit.data.d imports rlhfkit.rollout.e"]
    assert cycles(graph) == [["rlhfkit.trainers.b", "rlhfkit.trainers.c"]]
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert list(long_functions({"m.py": f"def f():\n{body}\n"})) == ["m.py:f"]
    assert long_functions({"m.py": "def f():\n    return 1\n"}) == {}


def test_every_part_has_a_rank():
    parts = {part(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert parts <= set(RANKS), f"give these parts of the package a rank in RANKS: {parts - set(RANKS)}"

