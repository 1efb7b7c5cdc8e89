"""The synthetic tasks of the embedded model as :class:`Task` values (``toy/<name>``)."""

from __future__ import annotations

from tvlens.tasks._registry import register
from tvlens.tasks._task import Example, Task
from tvlens.toy._world import ToyTaskDef, world

TOY_SEPARATOR = " , "
TOY_ANSWER_PREFIX = " "


def toy_task(d: ToyTaskDef) -> Task:
    """Convert a world task definition to a :class:`Task` with the toy prompt format."""
    if d.arity == 1:
        template = "{x} ->"
        examples = tuple(Example((("x", inp[0]),), out) for inp, out in d.table)
    else:
        template = "{x} {x2} ->"
        examples = tuple(Example((("x", inp[0]), ("x2", inp[1])), out) for inp, out in d.table)
    return Task(
        name=f"toy/{d.name}",
        kind=d.kind,  # type: ignore[arg-type]
        examples=examples,
        template=template,
        label_words=d.label_words,
        answer_prefix=TOY_ANSWER_PREFIX,
        separator=TOY_SEPARATOR,
        description=d.description,
        source="synthetic (tvlens.toy)",
        meta=(("arity", str(d.arity)), ("evaluated", str(d.evaluated))),
    )


def with_instruction(splits):
    """The same toy splits with the task's instruction token before every prompt.

    The embedded model learned tasks from instructions too; tvlens evaluates it WITHOUT them
    and reports instruction accuracy apart. Only meaningful for ``toy/*`` tasks.
    """
    import dataclasses

    from tvlens.toy._world import task_token

    task = dataclasses.replace(splits.task, prefix=task_token(splits.task.base_name.removeprefix("toy/")) + " ")
    return dataclasses.replace(splits, task=task)


def toy_task_names(*, benchmark_only: bool = True) -> list[str]:
    """Registry names of the toy tasks; by default only the benchmark ones (no ``echo``)."""
    return [f"toy/{n}" for n, d in world().items() if d.evaluated or not benchmark_only]


def _register_all() -> None:
    for d in world().values():
        register(f"toy/{d.name}", (lambda d=d: toy_task(d)), d.description)
