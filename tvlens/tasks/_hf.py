"""The paper's classification datasets: SST-2, TREC, SNLI, RTE (hub or local files).

Context: the LTV paper prompts each dataset with a fixed template and single-token label words
(METHOD.md section 6). :func:`load_hf_task` reads the Hugging Face copy, a local file with the
same fields, or an already loaded ``datasets.Dataset``. Without network the hub path fails fast
with :class:`~tvlens.errors.DatasetUnavailableError` that says how to load a local file instead.

>>> t = load_hf_task("sst2", source="tests/fixtures/sst2.jsonl")  # run from the repository root
>>> t.template, t.label_words
('{x} Sentiment:', ('negative', 'positive'))
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvlens import _hub
from tvlens.errors import DatasetUnavailableError, TaskFormatError
from tvlens.tasks._registry import register
from tvlens.tasks._task import Example, Task

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = _hub.HUB_TIMEOUT_S  # how long to wait for the hub before giving up
REGISTRY_MAX_EXAMPLES = 10_000  # registry entries sample this many train examples (seed 0)
_LOADERS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".parquet": "parquet"}
_PAIR_TEMPLATE = "The question is: {premise} ? The answer {hypothesis}"


@dataclass(frozen=True)
class HFTaskSpec:
    """How one paper dataset maps to a :class:`Task`."""

    name: str  # registry name
    hub_path: str  # dataset id on the hub
    hub_config: str | None  # configuration name (glue subsets) or None
    input_fields: tuple[str, ...]  # hub column per template field, in template order
    simple_fields: tuple[str, ...]  # the simpler local schema's columns (text / premise, hypothesis)
    label_fields: tuple[str, ...]  # label columns tried in order (hub name first, then "label")
    class_names: tuple[str, ...]  # the hub's class names, in label-id order
    label_words: tuple[str, ...]  # the paper's label word for each class id
    template: str  # query template; fields x or premise/hypothesis
    description: str  # one line for listings

    @property
    def template_fields(self) -> tuple[str, ...]:
        return ("x",) if len(self.input_fields) == 1 else ("premise", "hypothesis")

    def example_row(self) -> str:
        cols = [f'"{c}": "..."' for c in self.input_fields]
        return "{" + ", ".join([*cols, f'"{self.label_fields[0]}": 0..{len(self.label_words) - 1}']) + "}"


HF_TASKS: dict[str, HFTaskSpec] = {
    s.name: s
    for s in (
        HFTaskSpec(
            "sst2", "nyu-mll/glue", "sst2", ("sentence",), ("text",), ("label",),
            ("negative", "positive"), ("negative", "positive"), "{x} Sentiment:",
            "SST-2 sentiment (glue/sst2): '{x} Sentiment:' -> negative/positive",
        ),
        HFTaskSpec(
            "trec", "CogComp/trec", None, ("text",), ("text",), ("coarse_label", "label-coarse", "label"),
            ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"),
            ("abbreviation", "entity", "description", "human", "location", "number"),
            "Question: {x} Type:",
            "TREC question type (CogComp/trec, coarse): 'Question: {x} Type:' -> 6 types",
        ),
        HFTaskSpec(
            "snli", "stanfordnlp/snli", None, ("premise", "hypothesis"), ("premise", "hypothesis"), ("label",),
            ("entailment", "neutral", "contradiction"), ("true", "maybe", "false"), _PAIR_TEMPLATE,
            "SNLI inference (stanfordnlp/snli): premise/hypothesis -> true/maybe/false",
        ),
        HFTaskSpec(
            "rte", "nyu-mll/glue", "rte", ("sentence1", "sentence2"), ("premise", "hypothesis"), ("label",),
            ("entailment", "not_entailment"), ("true", "false"), _PAIR_TEMPLATE,
            "RTE entailment (glue/rte): premise/hypothesis -> true/false",
        ),
    )
}


def load_hf_task(
    name: str,
    *,
    source: str | os.PathLike[str] | datasets.Dataset | None = None,
    split: str = "train",
    max_examples: int | None = None,
    seed: int = 0,
) -> Task:
    """One of the paper's classification tasks (``sst2``, ``trec``, ``snli``, ``rte``).

    ``source`` is ``None`` (download ``split`` from the hub), a local ``.jsonl`` / ``.json`` /
    ``.csv`` / ``.parquet`` file, or a ``datasets.Dataset``. Rows carry the hub's fields
    (e.g. ``sentence``/``label`` for sst2) or the simpler ``text``/``label`` (single input) or
    ``premise``/``hypothesis``/``label`` (pairs); a label is the class id or the label word (or
    the hub's class name). Unlabelled rows (label -1) are dropped. ``max_examples`` keeps a
    random subset chosen with ``seed`` (in the original order).
    """
    spec = _spec(name)
    if source is None:
        ds, origin = _load_hub(spec, split), f"hub:{spec.hub_path}" + (f"/{spec.hub_config}" if spec.hub_config else "")
        origin += f" ({split})"
    elif isinstance(source, (str, os.PathLike)):
        ds, origin = _load_local(spec, Path(source)), str(source)
    else:
        ds, origin = _as_dataset(spec, source), "datasets.Dataset"
    if max_examples is not None and max_examples < 1:
        raise TaskFormatError(f"max_examples must be a positive number or None, got {max_examples}")
    return _to_task(spec, ds, origin, max_examples, seed)


def _spec(name: str) -> HFTaskSpec:
    if name not in HF_TASKS:
        raise TaskFormatError(f"no paper dataset named {name!r}; choose one of {sorted(HF_TASKS)}")
    return HF_TASKS[name]


def _fix(spec: HFTaskSpec) -> str:
    return (
        f'load it from a local file: tv.tasks.load_hf_task("{spec.name}", source="path/to/{spec.name}.jsonl"), '
        f"one JSON object per line with the fields {spec.example_row()} (.json, .csv and .parquet work "
        "too), or pass an already loaded datasets.Dataset as source="
    )


# ---------------------------------------------------------------------------------------------
# sources


def _load_hub(spec: HFTaskSpec, split: str) -> datasets.Dataset:
    import datasets
    import datasets.config

    what = spec.hub_path + (f" ({spec.hub_config})" if spec.hub_config else "")
    env_offline = _hub.env_offline("HF_DATASETS_OFFLINE")
    lib_offline = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))
    if env_offline and not lib_offline:  # set after `datasets` was imported: it would still try the network
        raise DatasetUnavailableError(
            f"cannot download {what}: offline mode is set (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE). To use a "
            f"copy in your Hugging Face cache, set the variable before importing datasets; otherwise {_fix(spec)}"
        )
    if not lib_offline:
        reason = _hub.hub_unreachable(datasets.config.HF_ENDPOINT, HUB_PROBE_TIMEOUT_S)
        if reason is not None:
            raise DatasetUnavailableError(
                f"cannot download {what}: the Hugging Face Hub is unreachable ({reason}). If it is already in "
                f"your cache, set HF_HUB_OFFLINE=1 before importing datasets; otherwise {_fix(spec)}"
            )
    logger.info("loading %s split %r from the hub", what, split)
    try:
        return datasets.load_dataset(spec.hub_path, spec.hub_config, split=split)
    except Exception as e:  # connection errors, missing cache, unknown split: all say "use a local file"
        raise DatasetUnavailableError(
            f"cannot load {what} split {split!r} from the hub ({type(e).__name__}: {e}); {_fix(spec)}"
        ) from e


def _load_local(spec: HFTaskSpec, path: Path) -> datasets.Dataset:
    loader = _LOADERS.get(path.suffix.lower())
    if loader is None:
        raise TaskFormatError(
            f"source {str(path)!r}: unsupported file type {path.suffix!r}; use one of {sorted(_LOADERS)} or "
            "pass a datasets.Dataset"
        )
    if not path.is_file():
        raise TaskFormatError(f"source file {str(path)!r} not found (resolved to {str(path.resolve())!r})")
    import datasets

    logger.info("loading %s from %s", spec.name, path)
    quiet = not datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # no bars for a local file; restored below
    try:
        return datasets.load_dataset(loader, data_files=str(path), split="train")
    except Exception as e:  # pyarrow / JSON / CSV parse errors
        raise TaskFormatError(
            f"cannot read {str(path)!r} as {loader} ({type(e).__name__}: {e}); expected one row per example "
            f"with the fields {spec.example_row()}"
        ) from e
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def _as_dataset(spec: HFTaskSpec, source: Any) -> datasets.Dataset:
    import datasets

    if isinstance(source, datasets.DatasetDict):
        raise TaskFormatError(
            f"source for {spec.name!r} is a DatasetDict with splits {list(source)}; pass one split, e.g. "
            f"source=ds[{next(iter(source), 'train')!r}]"
        )
    if not isinstance(source, datasets.Dataset):
        raise TaskFormatError(
            f"source for {spec.name!r} must be None, a file path or a datasets.Dataset, got {type(source).__name__}"
        )
    return source


# ---------------------------------------------------------------------------------------------
# rows -> Task


def _columns(spec: HFTaskSpec, ds: datasets.Dataset, origin: str) -> tuple[tuple[str, ...], str]:
    cols = set(ds.column_names)
    inputs = next((f for f in (spec.input_fields, spec.simple_fields) if set(f) <= cols), None)
    label = next((c for c in spec.label_fields if c in cols), None)
    if inputs is None or label is None:
        simple = {c: "..." for c in spec.simple_fields}
        raise TaskFormatError(
            f"{spec.name} data from {origin} has columns {sorted(cols)}; expected {spec.example_row()} or "
            f'{str({**simple, "label": "<id or label word>"})}'
        )
    return inputs, label


def _label_word(spec: HFTaskSpec, value: Any, at: str) -> str | None:
    """The label word for a raw label (id, digit string, label word or class name); None if unlabelled."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        s = value.strip()
        if s.lstrip("-").isdigit():
            value = int(s)
        else:
            low = s.lower()
            for word, cls in zip(spec.label_words, spec.class_names):
                if low in (word.lower(), cls.lower()):
                    return word
    if isinstance(value, int) and not isinstance(value, bool):
        if value == -1:
            return None
        if 0 <= value < len(spec.label_words):
            return spec.label_words[value]
    raise TaskFormatError(
        f"{at}: label {value!r} is not a class id 0..{len(spec.label_words) - 1}, a label word "
        f"{list(spec.label_words)} or a class name {list(spec.class_names)}; fix the row (use -1 for unlabelled)"
    )


def _to_task(spec: HFTaskSpec, ds: datasets.Dataset, origin: str, max_examples: int | None, seed: int) -> Task:
    inputs, label_col = _columns(spec, ds, origin)
    words = [_label_word(spec, v, f"{spec.name} data from {origin} row {i}") for i, v in enumerate(ds[label_col])]
    keep = [i for i, w in enumerate(words) if w is not None]
    if max_examples is not None and max_examples < len(keep):
        keep = sorted(random.Random(seed).sample(keep, max_examples))
    if not keep:
        raise TaskFormatError(f"{spec.name} data from {origin} has no labelled rows (all labels are -1)")
    sub = ds.select(keep)
    texts = [list(sub[c]) for c in inputs]
    examples = []
    for j, i in enumerate(keep):
        vals = []
        for c, col in zip(inputs, texts):
            v = col[j]
            if not isinstance(v, str) or not v.strip():
                raise TaskFormatError(f"{spec.name} data from {origin} row {i}: field {c!r} is {v!r}; expected text")
            vals.append(v.strip())
        examples.append(Example(tuple(zip(spec.template_fields, vals)), words[i]))  # type: ignore[arg-type]
    dropped = len(words) - sum(w is not None for w in words)
    if dropped:
        logger.info("%s: dropped %d unlabelled rows (label -1)", spec.name, dropped)
    return Task(
        name=spec.name,
        kind="classification",
        examples=tuple(examples),
        template=spec.template,
        label_words=spec.label_words,
        answer_prefix=" ",
        separator="\n",
        description=spec.description,
        source=origin,
        meta=(("rows", str(len(ds))), ("label_column", label_col)),
    )


def _register_all() -> None:
    for n, s in HF_TASKS.items():
        register(n, (lambda n=n: load_hf_task(n, max_examples=REGISTRY_MAX_EXAMPLES)), s.description)
