"""Composed tasks: two tasks applied one after the other, for the composition analysis.

Context:
    ``tv.analysis.composition`` asks whether the sum of two task vectors solves the task that
    needs both. The composed task's answers are computed from the two tasks' own tables, so they
    are exact wherever both maps are defined.

    - ``toy/capitalize+antonym``: word -> its antonym, capitalized (antonym, then capitalize);
      every toy word has an antonym and every antonym a capitalized form, so all 96 words.
    - ``toy/successor+antonym``: word -> the antonym of its successor (successor, then antonym).
    - ``capitalize+antonym`` (real models): word -> its antonym with the first letter capitalized,
      from the shipped antonym list (439 pairs; ``str.capitalize`` is the capitalize map, which the
      shipped capitalize list follows too).

>>> from tvlens.tasks import get
>>> t = get("toy/capitalize+antonym")
>>> a = dict((e.inputs["x"], e.output) for e in get("toy/antonym").examples)
>>> all(e.output == a[e.inputs["x"]].capitalize() for e in t.examples)
True
"""

from __future__ import annotations

import dataclasses

from tvlens.tasks._registry import get, register
from tvlens.tasks._task import Example, Task

# name -> (first task, then task, description); the composed answer is then(first(x))
COMPOSED = {
    "toy/capitalize+antonym": ("toy/antonym", "toy/capitalize", "word -> its antonym, Capitalized (antonym then capitalize)"),
    "toy/successor+antonym": ("toy/successor", "toy/antonym", "word -> the antonym of its successor (successor then antonym)"),
}
REAL_COMPOSED = {
    "capitalize+antonym": ("antonym", "word -> its antonym, Capitalized (antonym then str.capitalize)"),
}


def compose(name: str, first: Task, then: Task, description: str = "") -> Task:
    """The task ``x -> then(first(x))`` over the inputs of ``first`` whose answer ``then`` maps.

    Single-input generation tasks only; the prompt format is ``first``'s.
    """
    from tvlens.errors import TaskFormatError

    for t in (first, then):
        if t.kind != "generation" or any(len(e.fields) != 1 for e in t.examples[:1]):
            raise TaskFormatError(f"cannot compose {t.name!r}: only single-input generation tasks compose; "
                                  "pick two word -> word tasks")
    table = {e.fields[0][1]: e.output for e in then.examples}
    examples = tuple(Example(e.fields, table[e.output]) for e in first.examples if e.output in table)
    if not examples:
        raise TaskFormatError(f"no answer of {first.name!r} is an input of {then.name!r}; these tasks do not compose")
    return dataclasses.replace(first, name=name, examples=examples, description=description or f"{then.name} after {first.name}",
                               source=f"composed: {then.name} after {first.name}")


def _capitalized(name: str, base: str, description: str) -> Task:
    t = get(base)
    ex = tuple(Example(e.fields, e.output[:1].upper() + e.output[1:]) for e in t.examples)
    return dataclasses.replace(t, name=name, examples=ex, description=description,
                               source=f"composed: capitalize after {base} ({t.source})")


def _register_all() -> None:
    for name, (a, b, desc) in COMPOSED.items():
        register(name, (lambda name=name, a=a, b=b, desc=desc: compose(name, get(a), get(b), desc)), desc)
    for name, (base, desc) in REAL_COMPOSED.items():
        register(name, (lambda name=name, base=base, desc=desc: _capitalized(name, base, desc)), desc)


# tasks whose answer is a rule on the input, defined for every word (not only the listed ones)
RULES = {
    "capitalize": lambda w: w[:1].upper() + w[1:],
    "toy/capitalize": lambda w: w[:1].upper() + w[1:],
}


def parts(name: str) -> tuple[str, str] | None:
    """The two registry tasks a registered composed task is made of (first, then), else None."""
    if name in COMPOSED:
        return COMPOSED[name][:2]
    if name in REAL_COMPOSED:
        return (REAL_COMPOSED[name][0], "capitalize")
    return None
