"""Custom tasks from your own files (.json, .jsonl, .csv) or a ``datasets.Dataset``.

Every malformed input raises :class:`~tvlens.errors.TaskFormatError` naming the file and row and
saying how to fix it.

>>> import json, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "opposites.json")
>>> with open(path, "w") as f:
...     json.dump([{"input": "hot", "output": "cold"}, {"input": "up", "output": "down"}], f)
>>> t = from_file(path, template="{x} ->")
>>> t.name, t.prompt_text(t.examples[1], [t.examples[0]])
('opposites', 'hot -> cold\\nup ->')
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvlens.errors import TaskFormatError
from tvlens.tasks._task import Example, Task, check_consistent

if TYPE_CHECKING:
    import datasets

_FORMAT_KEYS = ("template", "answer_prefix", "separator", "prefix", "description", "source", "meta", "kind")
_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv")


def from_file(
    path: str | os.PathLike[str],
    name: str | None = None,
    *,
    input_field: str | Sequence[str] = "input",
    output_field: str = "output",
    label_words: Iterable[str] | None = None,
    **fmt: Any,
) -> Task:
    """A task from a local file of input -> output examples.

    Accepted layouts:

    - ``.json``: a list of ``{"input": ..., "output": ...}`` objects, a list of
      ``[input, output]`` pairs, or an object ``{"pairs": [...], "description": ...}`` holding
      either list;
    - ``.jsonl`` (or ``.ndjson``): one such object (or pair) per line;
    - ``.csv`` / ``.tsv``: a header row naming ``input_field`` and ``output_field``.

    ``name`` defaults to the file's stem. ``input_field`` may be several fields (e.g.
    ``("premise", "hypothesis")``); the example then keeps those field names for the template.
    With ``label_words`` the task is a classification task; an output may then also be given as
    the integer index of its label word. ``fmt`` are :class:`Task` format fields (``template``: a
    query format string or a named template, ``"arrow"`` or ``"qa"``,
    ``answer_prefix``, ``separator``, ``prefix``, ``description``, ``source``, ``meta``).
    """
    p = Path(path)
    if not p.is_file():
        what = "a directory, not a file" if p.is_dir() else "not found"
        raise TaskFormatError(
            f"task file {str(p)!r} is {what} (resolved to {str(p.resolve())!r}); pass the path of a "
            f"{'/'.join(_SUFFIXES)} file"
        )
    suffix = p.suffix.lower()
    if suffix not in _SUFFIXES:
        raise TaskFormatError(
            f"task file {str(p)!r}: unsupported extension {p.suffix!r}; use one of {', '.join(_SUFFIXES)} "
            "(or load it yourself and call tvlens.tasks.from_dataset / from_pairs)"
        )
    fields = _field_list(input_field)
    if suffix == ".json":
        rows, extra = _read_json(p)
        if "description" in extra and "description" not in fmt:
            fmt["description"] = extra["description"]
    elif suffix in (".jsonl", ".ndjson"):
        rows = _read_jsonl(p)
    else:
        rows = _read_csv(p, delimiter="\t" if suffix == ".tsv" else ",", fields=fields, output_field=output_field)
    fmt.setdefault("source", str(p))
    where = f"task file {str(p)!r}"
    return _build(name or p.stem, rows, fields, output_field, label_words, fmt, where)


def from_dataset(
    ds: datasets.Dataset,
    name: str,
    *,
    input_field: str | Sequence[str],
    output_field: str,
    label_words: Iterable[str] | None = None,
    **fmt: Any,
) -> Task:
    """A task from the rows of a ``datasets.Dataset`` (already loaded, any source).

    An integer output is mapped through ``label_words`` when given, else through the column's
    ``ClassLabel`` names when it has them. Other arguments are as in :func:`from_file`.
    """
    import datasets as hf

    if isinstance(ds, hf.DatasetDict):
        raise TaskFormatError(
            f"task {name!r}: got a DatasetDict with splits {list(ds)}; pick one, e.g. ds[{next(iter(ds), 'train')!r}]"
        )
    if not isinstance(ds, hf.Dataset):
        raise TaskFormatError(f"task {name!r}: expected a datasets.Dataset, got {type(ds).__name__}")
    fields = _field_list(input_field)
    missing = [c for c in (*fields, output_field) if c not in ds.column_names]
    if missing:
        raise TaskFormatError(
            f"task {name!r}: the dataset has no column(s) {missing}; its columns are {ds.column_names}. "
            "Pass input_field= and output_field= naming existing columns"
        )
    feature = ds.features.get(output_field)
    class_names = tuple(feature.names) if isinstance(feature, hf.ClassLabel) else None
    fmt.setdefault("source", "datasets.Dataset")
    return _build(name, ds, fields, output_field, label_words, fmt, f"dataset for task {name!r}", class_names)


# ---------------------------------------------------------------------------------------------
# readers: each returns a list of rows (dicts or 2-item lists) and never builds a Task


def _read_json(p: Path) -> tuple[list[Any], dict[str, Any]]:
    data = _parse_json(_read_text(p), f"task file {str(p)!r}")
    extra: dict[str, Any] = {}
    if isinstance(data, dict):
        if "pairs" not in data:
            raise TaskFormatError(
                f"task file {str(p)!r} holds a JSON object with keys {sorted(data)[:8]} but no 'pairs'; "
                'use a list of {"input": ..., "output": ...} objects, a list of [input, output] pairs, '
                'or {"pairs": [...]}'
            )
        extra = {k: v for k, v in data.items() if k != "pairs"}
        data = data["pairs"]
        if "description" in extra and not isinstance(extra["description"], str):
            raise TaskFormatError(f"task file {str(p)!r}: 'description' must be a string")
    if not isinstance(data, list):
        raise TaskFormatError(
            f"task file {str(p)!r}: expected a JSON list of examples, got {type(data).__name__}; "
            'use [{"input": ..., "output": ...}, ...] or [[input, output], ...]'
        )
    return data, extra


def _read_text(p: Path) -> str:
    """The file's text as UTF-8 (a leading byte-order mark is accepted and dropped)."""
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TaskFormatError(
            f"task file {str(p)!r} is not UTF-8 text (byte {data[e.start]:#04x} on line {line}); save it as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 {p.name} > {p.stem}.utf8{p.suffix}`"
        ) from None


def _read_jsonl(p: Path) -> list[Any]:
    rows: list[Any] = []
    for lineno, line in enumerate(_read_text(p).splitlines(), start=1):
        if line.strip():
            rows.append(_parse_json(line, f"task file {str(p)!r} line {lineno}"))
    return rows


def _read_csv(p: Path, *, delimiter: str, fields: tuple[str, ...], output_field: str) -> list[Any]:
    import io

    with io.StringIO(_read_text(p), newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in (*fields, output_field) if c not in header]
        if missing:
            raise TaskFormatError(
                f"task file {str(p)!r}: the header row {header} lacks column(s) {missing}; add a header "
                f"such as {delimiter.join((*fields, output_field))!r} or pass input_field= / output_field="
            )
        rows = []
        for row in reader:
            if None in row:  # more cells than header names
                raise TaskFormatError(
                    f"task file {str(p)!r} line {reader.line_num}: more cells than header columns; quote "
                    'cells that contain the delimiter (e.g. "a, b")'
                )
            if any(v.strip() for v in row.values() if v is not None):
                rows.append(row)
    return rows


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskFormatError(f"{where}: invalid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


# ---------------------------------------------------------------------------------------------
# rows -> Task


def _field_list(input_field: str | Sequence[str]) -> tuple[str, ...]:
    fields = (input_field,) if isinstance(input_field, str) else tuple(input_field)
    if not fields or not all(isinstance(f, str) and f for f in fields):
        raise TaskFormatError(f"input_field must be a column name or a list of names, got {input_field!r}")
    return fields


def _build(
    name: str,
    rows: Iterable[Any],
    fields: tuple[str, ...],
    output_field: str,
    label_words: Iterable[str] | None,
    fmt: dict[str, Any],
    where: str,
    class_names: tuple[str, ...] | None = None,
) -> Task:
    unknown = sorted(set(fmt) - set(_FORMAT_KEYS))
    if unknown:
        raise TypeError(f"unknown format argument(s) {unknown}; allowed: {list(_FORMAT_KEYS)}")
    labels = tuple(label_words) if label_words is not None else None
    names = ("x",) if len(fields) == 1 else fields  # one input -> the usual "{x}" template
    if len(fields) > 1:
        fmt.setdefault("template", " ".join("{" + f + "}" for f in fields))
    examples = []
    for i, row in enumerate(rows):
        at = f"{where} row {i}"
        if isinstance(row, Mapping):
            missing = [c for c in (*fields, output_field) if c not in row]
            if missing:
                raise TaskFormatError(
                    f"{at}: missing field(s) {missing} (has {sorted(row)[:8]}); every example needs "
                    f"{list((*fields, output_field))}, or pass input_field= / output_field="
                )
            ins = [row[c] for c in fields]
            out = row[output_field]
        elif isinstance(row, (list, tuple)) and len(fields) == 1 and len(row) == 2:
            ins, out = [row[0]], row[1]
        else:
            raise TaskFormatError(
                f"{at}: got {row!r}; expected an object with fields {list((*fields, output_field))}"
                + (" or an [input, output] pair" if len(fields) == 1 else "")
            )
        texts = [_text(v, f"{at} field {c!r}") for c, v in zip(fields, ins)]
        examples.append(Example(tuple(zip(names, texts)), _output(out, labels, class_names, at)))
    if not examples:
        raise TaskFormatError(f"{where} has no examples; add at least one input -> output example")
    check_consistent(examples, where)
    kind = fmt.pop("kind", None) or ("classification" if labels else "generation")
    from tvlens.tasks._templates import expand_format

    return Task(name=name, kind=kind, examples=tuple(examples), label_words=labels, **expand_format(fmt))


def _text(value: Any, at: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TaskFormatError(f"{at}: expected text, got {type(value).__name__} {value!r}")
    text = str(value).strip()
    if not text:
        raise TaskFormatError(f"{at}: empty text; remove the row or fill it in")
    return text


def _output(value: Any, labels: tuple[str, ...] | None, class_names: tuple[str, ...] | None, at: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        names = labels or class_names
        if names is not None:
            if not 0 <= value < len(names):
                raise TaskFormatError(f"{at}: label index {value} is outside 0..{len(names) - 1} ({list(names)})")
            return names[value]
    text = _text(value, f"{at} output")
    if labels is not None and text not in labels:
        if text.isdigit() and int(text) < len(labels):  # CSV cells are strings: "1" -> labels[1]
            return labels[int(text)]
        raise TaskFormatError(
            f"{at}: output {text!r} is not one of label_words {list(labels)}; fix the row, add the word "
            "to label_words, or give the label's index"
        )
    return text
