"""Prompt templates: how a word-pair query and its demonstrations are written as text.

Context:
    On SmolLM2-135M the template, not the model, decided whether a learned task vector reaches
    ICL: with tvlens's old ``x ->`` format the capitalize LTV stayed at 0.59 against 0.93 for
    5-shot ICL; with the function-vectors format (``Q: x`` newline ``A:``, demonstrations
    separated by a blank line) it reached 0.96 (docs/real-model.md). So the template is a named
    option of every word-pair task:

    - ``"arrow"``: ``{x} ->``, demonstrations joined by a newline;
    - ``"qa"``: ``Q: {x}\\nA:``, demonstrations joined by a blank line (the function-vectors format);
    - any string with ``{x}`` (``"{x} =>"``): a custom query format, demonstrations joined by a
      newline; ``\\n`` written as the two characters backslash-n becomes a newline, so a shell
      argument can carry one.

    A task under a template that is not its default carries the template in its name:
    ``capitalize[arrow]``, ``antonym[{x} =>]``. :func:`tvlens.tasks.get` reads such names back,
    so a name printed anywhere (a table, a JSON payload, a vector header) names the exact task.
    Splits, demonstrations and baselines' random draws are keyed on the task's *base* name, so
    one task under two templates has the same queries and the same demonstrations.

>>> t = template("qa")
>>> t.query, t.separator
('Q: {x}\\nA:', '\\n\\n')
>>> template("{x} =>").name
'{x} =>'
>>> split_name("capitalize[qa]")
('capitalize', 'qa')
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

from tvlens.errors import TaskFormatError


@dataclass(frozen=True)
class Template:
    """A prompt format: ``prefix + separator.join(query + answer_prefix + answer, ..., query)``."""

    name: str  # "arrow", "qa", or the custom query string itself
    query: str  # the query format, field names in braces: "{x} ->"
    answer_prefix: str = " "  # text between a query and its answer
    separator: str = "\n"  # text between consecutive demonstrations

    def record(self) -> dict[str, str]:
        """The template as a JSON-able dict (what a task vector's file records)."""
        return {"name": self.name, "query": self.query, "answer_prefix": self.answer_prefix, "separator": self.separator}


TEMPLATES: dict[str, Template] = {
    "arrow": Template("arrow", "{x} ->", " ", "\n"),
    "qa": Template("qa", "Q: {x}\nA:", " ", "\n\n"),
}

_NAME = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<template>.+)\]$", re.DOTALL)


def template(spec: Any) -> Template:
    """The :class:`Template` named ``spec`` (``"arrow"``, ``"qa"``), or a custom query string."""
    if isinstance(spec, Template):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise TaskFormatError(
            f"template must be one of {sorted(TEMPLATES)} or a query format string with {{x}}, got {spec!r}"
        )
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    query = spec.replace("\\n", "\n")
    if "{" not in query:
        raise TaskFormatError(
            f"unknown template {spec!r}: use one of {sorted(TEMPLATES)}, or a query format with the input "
            "field in braces, e.g. '{x} =>'"
        )
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(query) if f is not None]
        if not fields or any(not f.isidentifier() for f in fields):
            raise ValueError(f"fields must be named, like {{x}}; got {fields}")
        query.format(**{f: f for f in fields})
    except (KeyError, IndexError, ValueError) as e:
        raise TaskFormatError(
            f"template {spec!r} is not a valid format string ({type(e).__name__}: {e}); write the input as "
            "{x} and double literal braces ({{ }})"
        ) from None
    return Template(query.replace("\n", "\\n"), query)


def split_name(name: str) -> tuple[str, str | None]:
    """``"capitalize[qa]"`` -> ``("capitalize", "qa")``; a name without brackets -> ``(name, None)``."""
    m = _NAME.match(name)
    return (m["base"], m["template"]) if m else (name, None)


def expand_format(fmt: dict[str, Any]) -> dict[str, Any]:
    """Task format arguments with a named template (or :class:`Template`) expanded into its fields.

    ``template="qa"`` becomes the query, answer prefix and separator of ``qa`` (fields given
    explicitly win) and records ``template_name``; a plain query string is left as it is.
    """
    spec = fmt.get("template")
    if isinstance(spec, Template) or (isinstance(spec, str) and spec in TEMPLATES):
        t = template(spec)
        fmt = {**fmt, "template": t.query, "template_name": t.name}
        fmt.setdefault("answer_prefix", t.answer_prefix)
        fmt.setdefault("separator", t.separator)
    return fmt
