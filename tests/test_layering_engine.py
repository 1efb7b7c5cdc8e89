"""Nobody but the engine calls the model: an ``ast`` walk over ``tvlens/`` finds every forward call.

A forward call is ``model(...)`` / ``<anything>.model(...)``, ``.run_with_hooks(...)``,
``.run_with_cache(...)`` or any call with a ``start_at_layer=`` keyword. Only the modules (or, where
named, the functions) below may make one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tvlens

ROOT = Path(tvlens.__file__).parent

# module (relative to tvlens/) -> None (the whole module) or the functions allowed to call the model
ALLOWED: dict[str, frozenset[str] | None] = {
    "_engine.py": None,  # THE forward pass
    "_engine_lean.py": None,  # the engine's shared-prefix blocks
    "_engine_generate.py": None,  # greedy generation with steering edits
    "_reference.py": None,  # the pre-engine paths kept for the oracle tests and the bench
    "bench.py": frozenset({"bench_linear_copies"}),  # its reference arm: full forwards with a per-row vector
    "bench_peers.py": frozenset({"hf_matches_tvlens"}),  # the tvlens side of the check that the peers' model is the same function
    "toy/_train.py": None,  # trains the embedded model's weights (below the engine: it makes the model)
}


def _forward_calls(tree: ast.AST) -> list[tuple[int, str | None, str]]:
    """(line, enclosing function, what) of every forward call in ``tree``."""
    found: list[tuple[int, str | None, str]] = []

    def visit(node: ast.AST, func: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name if func is None else func  # the top-level function names the call
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "model":
                found.append((node.lineno, func, "model(...)"))
            elif isinstance(f, ast.Attribute) and f.attr == "model":
                found.append((node.lineno, func, ".model(...)"))
            elif isinstance(f, ast.Attribute) and f.attr in ("run_with_hooks", "run_with_cache"):
                found.append((node.lineno, func, f".{f.attr}(...)"))
            elif any(k.arg == "start_at_layer" for k in node.keywords):
                found.append((node.lineno, func, "start_at_layer="))
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, None)
    return found


def _offenders() -> list[str]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        allowed = ALLOWED.get(rel, frozenset())
        if allowed is None:
            continue
        for line, func, what in _forward_calls(ast.parse(path.read_text(), filename=str(path))):
            if func not in allowed:
                out.append(f"tvlens/{rel}:{line} ({func or 'module level'}): {what}")
    return out


def test_only_the_engine_calls_the_model():
    offenders = _offenders()
    assert not offenders, "forward passes outside tvlens._engine (use engine.forward / prefix / run):\n" + "\n".join(offenders)


def test_the_walk_finds_every_kind_of_forward_call():
    src = ("def f(model, m, x):\n    model(x)\n    m.run_with_hooks(x)\n    m.run_with_cache(x)\n"
           "    m(x, start_at_layer=3)\n\nclass C:\n    def g(self, x):\n        return self.model(x)\n")
    whats = [(func, what) for _, func, what in _forward_calls(ast.parse(src))]
    assert whats == [("f", "model(...)"), ("f", ".run_with_hooks(...)"), ("f", ".run_with_cache(...)"),
                     ("f", "start_at_layer="), ("g", ".model(...)")]


def test_every_allowed_module_exists():
    missing = [rel for rel in ALLOWED if not (ROOT / rel).is_file()]
    assert not missing, f"stale entries in ALLOWED: {missing}"
