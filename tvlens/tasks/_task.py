"""The :class:`Task` value: a named set of input -> output examples plus how to format them."""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from tvlens.errors import TaskFormatError

TaskKind = Literal["classification", "generation"]


@dataclass(frozen=True)
class Example:
    """One example: named input fields (usually just ``x``) and the gold output text."""

    fields: tuple[tuple[str, str], ...]  # (field name, text), e.g. (("x", "hot"),)
    output: str  # gold answer text, without the leading space

    @classmethod
    def of(cls, output: str, **fields: str) -> Example:
        """``Example.of("cold", x="hot")``."""
        return cls(tuple(fields.items()), output)

    @property
    def inputs(self) -> dict[str, str]:
        return dict(self.fields)

    def query(self, template: str) -> str:
        """The query text of this example under ``template`` (e.g. ``"{x} ->"``)."""
        try:
            return template.format(**self.inputs)
        except KeyError as e:
            raise TaskFormatError(
                f"template {template!r} uses field {e.args[0]!r} but the example has fields "
                f"{sorted(self.inputs)}; rename the field or change the template"
            ) from None


@dataclass(frozen=True)
class Task:
    """A task: examples plus the prompt format that turns them into (k-shot) prompts.

    A prompt is ``prefix + sep.join(demo_1, ..., demo_k, query)`` where a demo is
    ``template.format(**fields) + answer_prefix + output`` and the query is
    ``template.format(**fields)``. The model must then produce ``answer_prefix + output``;
    accuracy is judged on the first token of that text.

    >>> t = Task.from_pairs("upper", [("a", "A"), ("b", "B")], template="{x} ->")
    >>> t.kind, len(t)
    ('generation', 2)
    """

    name: str  # registry name, e.g. "sst2" or "toy/antonym"
    kind: TaskKind  # "classification" (fixed label words) or "generation" (open answers)
    examples: tuple[Example, ...]  # every available example (query pool and demo pool)
    template: str = "{x}"  # query format; field names in braces
    label_words: tuple[str, ...] | None = None  # classification: the answer vocabulary
    answer_prefix: str = " "  # text between a query and its answer (usually a space)
    separator: str = "\n"  # text between consecutive demonstrations
    prefix: str = ""  # text before the first demonstration (after BOS)
    description: str = ""  # one line for listings
    source: str = ""  # where the data came from (dataset id, file, "synthetic")
    template_name: str = ""  # the named template the format came from ("arrow", "qa"); "" = the task's own
    meta: tuple[tuple[str, str], ...] = field(default=())  # free-form string metadata

    def __post_init__(self) -> None:
        if self.kind not in ("classification", "generation"):
            raise TaskFormatError(f"task {self.name!r}: kind must be 'classification' or 'generation', got {self.kind!r}")
        if not self.examples:
            raise TaskFormatError(f"task {self.name!r} has no examples; give at least one (input, output) pair")
        if self.kind == "classification":
            if not self.label_words:
                raise TaskFormatError(f"classification task {self.name!r} needs label_words")
            if len(set(self.label_words)) != len(self.label_words):
                raise TaskFormatError(f"task {self.name!r}: duplicate label words {self.label_words}")
            bad = {e.output for e in self.examples} - set(self.label_words)
            if bad:
                raise TaskFormatError(
                    f"task {self.name!r}: outputs {sorted(bad)[:5]} are not among label_words {self.label_words}"
                )
        self.examples[0].query(self.template)  # fail early on a template/field mismatch

    @property
    def base_name(self) -> str:
        """The name without a template suffix: ``"capitalize[arrow]"`` -> ``"capitalize"``.

        Splits, demonstrations and baselines' random draws are keyed on it, so one task under two
        templates has the same queries and demonstrations.
        """
        from tvlens.tasks._templates import split_name

        return split_name(self.name)[0]

    def template_record(self) -> dict[str, str]:
        """This task's prompt format as a JSON-able dict (recorded in task-vector files)."""
        return {"name": self.template_name, "query": self.template, "answer_prefix": self.answer_prefix,
                "separator": self.separator}

    def with_template(self, spec, *, name: str | None = None) -> Task:
        """This task under the template ``spec`` (``"arrow"``, ``"qa"``, a query string or a Template).

        The name becomes ``base[template]`` unless ``name`` is given; the examples are unchanged. A
        task already in that format is returned as it is (its name unchanged).

        >>> t = Task.from_pairs("upper", [("a", "A"), ("b", "B")], template="arrow")
        >>> q = t.with_template("qa")
        >>> q.name, q.prompt_text(q.examples[1], [q.examples[0]])
        ('upper[qa]', 'Q: a\\nA: A\\n\\nQ: b\\nA:')
        """
        from tvlens.tasks._templates import template

        t = template(spec)
        if (t.query, t.answer_prefix, t.separator) == (self.template, self.answer_prefix, self.separator) and name is None:
            return self  # already in that format: it keeps its name
        have = sorted(k for k, _ in self.examples[0].fields)
        used = sorted({f for _, f, _, _ in string.Formatter().parse(t.query) if f})
        if used != have:
            raise TaskFormatError(
                f"task {self.name!r} has input field(s) {have} but template {t.name!r} formats {used}; "
                "give a custom template that uses every input field, e.g. '{x} {x2} ->'"
            )
        return replace(self, name=name or f"{self.base_name}[{t.name}]", template=t.query, answer_prefix=t.answer_prefix,
                       separator=t.separator, template_name=t.name)

    def __len__(self) -> int:
        return len(self.examples)

    def __repr__(self) -> str:
        labels = f", labels={list(self.label_words)}" if self.label_words else ""
        return f"Task({self.name!r}, {self.kind}, {len(self)} examples, template={self.template!r}{labels})"

    def demo_text(self, ex: Example) -> str:
        return ex.query(self.template) + self.answer_prefix + ex.output

    def prompt_text(self, query: Example, demos: Iterable[Example] = ()) -> str:
        """The full prompt string for ``query`` after ``demos`` (BOS is added by the tokenizer)."""
        parts = [self.demo_text(d) for d in demos] + [query.query(self.template)]
        return self.prefix + self.separator.join(parts)

    @classmethod
    def from_pairs(
        cls,
        name: str,
        pairs: Iterable[tuple[str, str]] | Mapping[str, str],
        *,
        kind: TaskKind | None = None,
        label_words: Iterable[str] | None = None,
        **fmt,
    ) -> Task:
        """A task from ``(input, output)`` pairs; classification if ``label_words`` is given."""
        items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
        examples = []
        for i, p in enumerate(items):
            if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(s, str) for s in p)):
                raise TaskFormatError(f"task {name!r}: pair {i} is {p!r}; expected a (input, output) pair of strings")
            examples.append(Example.of(p[1].strip(), x=p[0].strip()))
        check_consistent(examples, f"task {name!r}", "pair")
        labels = tuple(label_words) if label_words is not None else None
        kind = kind or ("classification" if labels else "generation")
        from tvlens.tasks._templates import expand_format

        return cls(name=name, kind=kind, examples=tuple(examples), label_words=labels, **expand_format(fmt))


def check_consistent(examples: Iterable[Example], where: str, row: str = "row") -> None:
    """Raise :class:`TaskFormatError` if one input is given two different outputs.

    Such data has no single gold answer, and the accuracy of any method on it is capped below 1
    without a word. (Exact duplicates are fine here; splitting drops them.)
    """
    first: dict[tuple, tuple[int, str]] = {}
    for i, e in enumerate(examples):
        if e.fields in first and first[e.fields][1] != e.output:
            j, out = first[e.fields]
            raise TaskFormatError(
                f"{where}: {row}s {j} and {i} give the input {dict(e.fields)} two different outputs "
                f"{out!r} and {e.output!r}; keep one answer per input (remove or fix one of the {row}s)"
            )
        first.setdefault(e.fields, (i, e.output))
