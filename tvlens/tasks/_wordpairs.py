"""Word-pair generation tasks: ``capital``, ``capitalize``, ``antonym`` (shipped word lists).

The lists in ``tvlens/tasks/data/`` were written for tvlens. Files in the function-vectors
format (a JSON list of ``{"input": ..., "output": ...}``) load with
:func:`load_function_vectors_json`.

>>> from tvlens.tasks import get
>>> t = get("capital")
>>> t.prompt_text(t.examples[0])
'Q: Afghanistan\\nA:'
>>> get("capital", template="arrow").prompt_text(t.examples[0])
'Afghanistan ->'
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from tvlens.errors import TaskFormatError
from tvlens.tasks._custom import from_file
from tvlens.tasks._registry import register
from tvlens.tasks._task import Task

# the default template of the word-pair and function-vectors tasks (tvlens.tasks._templates);
# chosen on SmolLM2 validation accuracy, see docs/real-model.md "The prompt template"
DEFAULT_TEMPLATE = "qa"
WORDPAIR_TASKS = ("capital", "capitalize", "antonym")

_DESCRIPTIONS = {
    "capital": "country or first-level region -> its capital city (generation)",
    "capitalize": "lowercase word -> Capitalized word (generation)",
    "antonym": "word -> its antonym (generation)",
}


def wordpair_task(name: str) -> Task:
    """The shipped word-pair task ``name`` (one of ``capital``, ``capitalize``, ``antonym``)."""
    if name not in WORDPAIR_TASKS:
        raise TaskFormatError(f"no shipped word-pair task {name!r}; choose one of {list(WORDPAIR_TASKS)}")
    ref = resources.files("tvlens.tasks") / "data" / f"{name}.json"
    with resources.as_file(ref) as path:
        return from_file(
            path,
            name,
            template=DEFAULT_TEMPLATE,
            source=f"tvlens/tasks/data/{name}.json",
        )


def load_function_vectors_json(path: str | os.PathLike[str], name: str | None = None, **fmt: Any) -> Task:
    """A generation task from a function-vectors file: a JSON list of ``{"input", "output"}``.

    ``name`` defaults to the file's stem; the format defaults to the word-pair tasks' default
    template (:data:`DEFAULT_TEMPLATE`) and ``fmt`` overrides it (``template="qa"``, a query string, ...).
    """
    p = Path(path)
    if p.is_file():
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TaskFormatError(
                f"function-vectors file {str(p)!r}: invalid JSON ({e.msg} at line {e.lineno})"
            ) from None
        if not isinstance(data, list):
            raise TaskFormatError(
                f"function-vectors file {str(p)!r}: expected a JSON list of "
                f'{{"input": ..., "output": ...}} objects, got {type(data).__name__}; '
                "for other layouts use tvlens.tasks.from_file"
            )
    fmt.setdefault("template", DEFAULT_TEMPLATE)
    return from_file(p, name, input_field="input", output_field="output", **fmt)


def _register_all() -> None:
    for n in WORDPAIR_TASKS:
        register(n, (lambda n=n: wordpair_task(n)), _DESCRIPTIONS[n])
