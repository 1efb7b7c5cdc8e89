"""Two-label word classification tasks for real models: ``country_or_city`` and ``animal_or_food``.

Context:
    The paper's classification datasets (SST-2, TREC, ...) need the Hugging Face Hub. These two
    tasks are offline and small, and their labels are single tokens on SmolLM2's tokenizer
    (`` country`` / `` city``, `` animal`` / `` food``), so a constant shift of the final state can
    in principle solve them (the OV reconstruction's premise, :mod:`tvlens.analysis.ov_scale`).

    ``country_or_city``: built from the shipped ``capital`` word pairs. Its leading block of pairs
    (alphabetical, Afghanistan .. Zimbabwe) are countries, labelled ``country``; every capital
    (countries' and first-level regions') is labelled ``city``. A name that would get both labels,
    or that is also a region's name, is left out. ``animal_or_food``: word lists written for
    tvlens (``tvlens/tasks/data/animal_or_food.json``), leaving out words that are both (chicken,
    lamb, ...). Both use the ``arrow`` template (``"France ->"`` answered `` country``).

>>> from tvlens.tasks import get
>>> t = get("country_or_city")
>>> t.label_words, t.prompt_text(t.examples[0])
(('country', 'city'), 'Afghanistan ->')
"""

from __future__ import annotations

from importlib import resources

from tvlens.errors import TaskFormatError
from tvlens.tasks._custom import from_file
from tvlens.tasks._registry import register
from tvlens.tasks._task import Task

WORDCLASS_TASKS = ("country_or_city", "animal_or_food")
TEMPLATE = "arrow"

_DESCRIPTIONS = {
    "country_or_city": "country or capital city name -> 'country' or 'city' (classification, from the capital pairs)",
    "animal_or_food": "common word -> 'animal' or 'food' (classification, word lists written for tvlens)",
}


def _countries(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The leading alphabetical run of the capital pairs: the countries (the regions follow, from 'Alabama')."""
    out = pairs[:1]
    for p in pairs[1:]:
        if p[0] <= out[-1][0]:
            break
        out.append(p)
    return out


def country_or_city_task() -> Task:
    """``country_or_city`` from the shipped ``capital`` pairs (see the module docstring)."""
    from tvlens.tasks._wordpairs import wordpair_task

    cap = wordpair_task("capital")
    pairs = [(e.inputs["x"], e.output) for e in cap.examples]
    countries = _countries(pairs)
    if len(countries) < 50:
        raise TaskFormatError(f"country_or_city: the capital list's leading block holds {len(countries)} countries; "
                              "keep the countries first and alphabetical in tvlens/tasks/data/capital.json")
    country_names = {c for c, _ in countries}
    regions = {x for x, _ in pairs} - country_names
    cities = list(dict.fromkeys(y for _, y in pairs))
    both = country_names & set(cities)
    rows = [(c, "country") for c, _ in countries if c not in both]
    rows += [(y, "city") for y in cities if y not in both and y not in regions]
    return Task.from_pairs("country_or_city", rows, label_words=("country", "city"), template=TEMPLATE,
                           description=_DESCRIPTIONS["country_or_city"], source="tvlens/tasks/data/capital.json")


def animal_or_food_task() -> Task:
    """``animal_or_food`` from ``tvlens/tasks/data/animal_or_food.json``."""
    ref = resources.files("tvlens.tasks") / "data" / "animal_or_food.json"
    with resources.as_file(ref) as path:
        return from_file(path, "animal_or_food", label_words=("animal", "food"), template=TEMPLATE,
                         source="tvlens/tasks/data/animal_or_food.json")


def _register_all() -> None:
    register("country_or_city", country_or_city_task, _DESCRIPTIONS["country_or_city"])
    register("animal_or_food", animal_or_food_task, _DESCRIPTIONS["animal_or_food"])
