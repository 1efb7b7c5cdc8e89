"""The package's layering, read from its imports with ``ast`` (module-level and in-function alike).

    ground (errors, checks, io, results) -> data (sites, vectors, tasks, prompts) -> model
    -> engine (hooks, the forward pass) -> vectors (evaluate, steering, LTV, baselines)
    -> analyses -> the package root (the curated API) -> views (viz) -> CLI (cli, bench)

A module may import its own level or lower ones, never a higher one; no import cycle, lazy or not;
no private name (``_x``) taken from a module of another package, by ``from m import _x`` or ``m._x``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "tvlens"

LEVELS = [  # (module prefix, level); the longest matching prefix wins
    ("tvlens.errors", 0), ("tvlens._validate", 0), ("tvlens._io", 0), ("tvlens._result", 0), ("tvlens._memo", 0), ("tvlens._plot", 0), ("tvlens.stats", 0),
    ("tvlens._progress", 0),  # the command bar: tqdm only
    ("tvlens.sites", 1), ("tvlens.vector", 1), ("tvlens.tasks", 1), ("tvlens.prompts", 1),
    ("tvlens._hub", 0),  # downloads: the standard library only
    ("tvlens.toy._world", 1), ("tvlens._fingerprint", 1),  # the toy world's word lists; a hash of a model's config
    ("tvlens._models", 2), ("tvlens._backend", 2), ("tvlens._bridge", 2), ("tvlens._gguf", 2), ("tvlens.toy", 2),
    ("tvlens._hooks", 3), ("tvlens.interventions", 3), ("tvlens._engine", 3), ("tvlens._engine_lean", 3),
    ("tvlens._engine_generate", 3), ("tvlens.store", 3), ("tvlens._executor", 3),  # the vector store; the job executor
    ("tvlens.evaluate", 4), ("tvlens.steer", 4), ("tvlens.ltv", 4), ("tvlens.baselines", 4),
    ("tvlens.analysis", 5), ("tvlens._reference", 5), ("tvlens._claims", 5),  # the full-width reference paths of the bench and the oracles
    ("tvlens", 6),  # the package root: tvlens/__init__.py
    ("tvlens.viz", 7),
    ("tvlens.cli", 8), ("tvlens.bench", 8), ("tvlens.bench_peers", 8), ("tvlens.__main__", 8),
]
# Known violations left for later, each named exactly (a new one fails; a fixed or stale one fails too: remove it here):
KNOWN_UPWARD: set[tuple[str, str]] = set()  # (module, the higher module it imports)
KNOWN_CYCLES: set[tuple[str, str]] = set()  # (a, b) sorted: an edge of the cycle
KNOWN_PRIVATE: set[tuple[str, str]] = set()  # (module, "target.name")
NAMES = ["ground", "data", "model", "engine", "vectors", "analyses", "package root", "views", "CLI"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _level(module: str) -> int:
    best = max((p for p, _ in LEVELS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} has no level in tests/test_layering.py; add it to LEVELS")
    return dict(LEVELS)[best]


def _package(module: str) -> str:
    path = MODULES[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str):
    """(target module, imported name or None, line) of every tvlens import, and the local names bound to tvlens objects."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    out, bound = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "tvlens":
                    out.append((a.name, None, node.lineno))
                    bound[(a.asname or a.name).split(".")[0]] = a.name if a.asname else "tvlens"
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "tvlens":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                target = sub if sub in MODULES else node.module
                out.append((target, None if target == sub else a.name, node.lineno))
                bound[a.asname or a.name] = target
    return tree, out, bound


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in _imports(m)[1] if t in MODULES and t != m} for m in MODULES}


def test_every_module_has_a_level():
    for m in MODULES:
        _level(m)


def test_no_upward_import():
    bad = []
    for m in MODULES:
        for target, _, line in _imports(m)[1]:
            if target in MODULES and _level(target) > _level(m) and (m, target) not in KNOWN_UPWARD:
                bad.append(f"{m}:{line} ({NAMES[_level(m)]}) imports {target} ({NAMES[_level(target)]})")
    assert not bad, "imports that run up the layers:\n" + "\n".join(bad)


def test_no_import_cycle():
    graph, cycles = _graph(), []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                loop = stack[stack.index(t):]
                if not any(tuple(sorted((a, b))) in KNOWN_CYCLES for a, b in zip(loop, loop[1:] + loop[:1])):
                    cycles.append(" -> ".join(loop + [t]))
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles (counting in-function imports):\n" + "\n".join(cycles)


def test_no_private_name_across_packages():
    bad = []
    for m in MODULES:
        tree, imports, bound = _imports(m)
        for target, name, line in imports:
            if name and name.startswith("_") and not name.startswith("__") and target in MODULES and _package(target) != _package(m):
                if (m, f"{target}.{name}") not in KNOWN_PRIVATE:
                    bad.append(f"{m}:{line} imports {target}.{name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and node.value.id in bound):
                target = bound[node.value.id]
                owner = target if target in MODULES else target.rpartition(".")[0]
                if owner in MODULES and _package(owner) != _package(m):
                    bad.append(f"{m}:{node.lineno} uses {node.value.id}.{node.attr} (from {target})")
    assert not bad, "private names used across packages:\n" + "\n".join(bad)


def test_no_stale_known_violation():
    """Every KNOWN_* entry names modules that exist and a violation that still stands."""
    graph = _graph()
    stale = [f"KNOWN_UPWARD {e}" for e in KNOWN_UPWARD if e[0] not in MODULES or e[1] not in graph.get(e[0], ())
             or _level(e[1]) <= _level(e[0])]
    stale += [f"KNOWN_CYCLES {(a, b)}" for a, b in KNOWN_CYCLES  # a cycle stands: an edge between a and b, and a path back
              if not ((b in graph.get(a, ()) and _reaches(graph, a, b)) or (a in graph.get(b, ()) and _reaches(graph, b, a)))]
    for m, full in KNOWN_PRIVATE:
        target, _, name = full.rpartition(".")
        if m not in MODULES or (target, name) not in {(t, n) for t, n, _ in _imports(m)[1]}:
            stale.append(f"KNOWN_PRIVATE {(m, full)}")
    assert not stale, "stale exceptions (the violation is gone or the module no longer exists): remove them\n" + "\n".join(stale)


def _reaches(graph: dict[str, set[str]], a: str, b: str) -> bool:
    """Whether ``b`` imports ``a`` through some path (so an edge a -> b closes a cycle)."""
    seen, todo = set(), [b]
    while todo:
        m = todo.pop()
        if m == a:
            return True
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return False


def test_modules_found_by_name_sit_at_or_below_the_importer_or_are_declared():
    """``importlib.import_module("tvlens....")`` counts as an import: the only upward one is the views' plugin point."""
    from tvlens.analysis._registry import VIEWS_PACKAGE

    bad = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
                    and node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("tvlens")):
                bad.append(f"{m}:{node.lineno} imports {node.args[0].value!r} by name")
            if isinstance(node, ast.Name) and node.id == "VIEWS_PACKAGE" and m != "tvlens.analysis._registry":
                bad.append(f"{m}:{node.lineno} loads the views by name (only the registry's view() may)")
    assert not bad, "\n".join(bad)
    assert VIEWS_PACKAGE in MODULES and _level(VIEWS_PACKAGE) == NAMES.index("views")


@pytest.mark.parametrize("source, expect", [
    ("from tvlens.cli._main import main\n", "upward"),
    ("def f():\n    from tvlens.analysis.geometry import _labels\n", "private"),
])
def test_the_checks_can_fail(tmp_path, monkeypatch, source, expect):
    """The walker sees module-level and in-function imports (a planted violation is caught)."""
    fake = ROOT / "viz" / "_layering_probe.py"
    monkeypatch.setitem(MODULES, "tvlens.viz._layering_probe", fake)
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source if self == fake else Path.read_bytes(self).decode())
    check = test_no_upward_import if expect == "upward" else test_no_private_name_across_packages
    with pytest.raises(AssertionError, match="_layering_probe"):
        check()


@pytest.mark.parametrize("name, entry", [
    ("KNOWN_UPWARD", ("tvlens.ltv._lean", "tvlens.viz.heads")),  # a module that no longer exists
    ("KNOWN_UPWARD", ("tvlens.analysis.circuit", "tvlens.viz.heads")),  # a violation that was fixed
    ("KNOWN_CYCLES", ("tvlens.analysis.linear", "tvlens.analysis.rotation")),
    ("KNOWN_PRIVATE", ("tvlens.bench", "tvlens.analysis.linear._Suffix")),
])
def test_a_stale_exception_fails(monkeypatch, name, entry):
    monkeypatch.setitem(globals(), name, {entry})
    with pytest.raises(AssertionError, match="stale"):
        test_no_stale_known_violation()
