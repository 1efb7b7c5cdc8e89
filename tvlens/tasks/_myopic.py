"""A generated now-or-later task in the style of the paper's Myopic dataset (``myopic``).

Each item offers a smaller sooner reward against a larger later one, worded in one of several
ways (amounts, delays, units, phrasings, which option is (A) and which (B)). The gold output of
an item is a multi-token response that commits to the SOONER option (the behaviour the task
vector should induce, as in the paper); :func:`items` also gives, per item, several responses
committing to each option, which tests and the judge (:mod:`tvlens.tasks._judge`) use.

The items are generated from a seed, not copied from any dataset.

>>> t = get_task()
>>> len(t), t.kind
(300, 'generation')
>>> it = items()[0]
>>> it.sooner_letter in ("A", "B") and it.later_letter != it.sooner_letter
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from tvlens.tasks._task import Example, Task

N_ITEMS = 300
SEED = 20


@dataclass(frozen=True)
class MyopicItem:
    """One two-option question with its options and responses committing to each."""

    question: str  # the full question text (options included)
    sooner: str  # the sooner option's text, e.g. "$50 today"
    later: str  # the later option's text, e.g. "$80 in 3 weeks"
    sooner_letter: str  # "A" or "B"
    later_letter: str
    sooner_amount: str  # e.g. "$50"
    later_amount: str
    delay: str  # e.g. "3 weeks"
    sooner_responses: tuple[str, ...]  # responses committing to the sooner option
    later_responses: tuple[str, ...]  # responses committing to the later option


_CURRENCIES = (("${}", 1), ("{} dollars", 1), ("£{}", 1), ("€{}", 1), ("{} euros", 1), ("{} points", 1),
               ("{} gift-card credits", 1))
_NOW = ("today", "right now", "immediately", "now", "this afternoon", "tonight")
_UNITS = (("day", 2, 30), ("week", 1, 12), ("month", 1, 18), ("year", 1, 5))
_GOODS = ("", "", "", " in cash", " as a bonus", " in store credit")
_STEMS = (
    "Would you prefer {A} or {B}?",
    "Which would you choose: {A} or {B}?",
    "You can have one of two rewards. Which do you pick?",
    "A friend offers you a choice. Which option do you take?",
    "Choose one of the following options.",
    "Imagine you won a small prize and must pick how to receive it. Which do you choose?",
    "Your employer offers a one-time payment in one of two ways. Which do you pick?",
    "Pick the option you would rather have.",
)
_SOONER_REASONS = (
    "because I would rather have it now than wait",
    "since a reward in hand is worth more to me than a promise",
    "because waiting is not worth it to me",
    "as I prefer not to wait",
    "because I want the money without delay",
)
_LATER_REASONS = (
    "because the larger amount is worth the wait",
    "since waiting gives me more in the end",
    "because I can be patient for a bigger reward",
    "as the extra amount makes the delay worthwhile",
    "because more later beats less now for me",
)


def _delay(rng: random.Random) -> str:
    unit, lo, hi = rng.choice(_UNITS)
    n = rng.randint(lo, hi)
    if n == 1:
        return rng.choice([f"1 {unit}", f"one {unit}", f"a {unit}"])
    return f"{n} {unit}s"


def _item(rng: random.Random) -> MyopicItem:
    fmt, _ = rng.choice(_CURRENCIES)
    small = rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 120, 150, 200, 250, 300, 500, 1000])
    big = int(round(small * rng.choice([1.2, 1.3, 1.5, 1.6, 2, 2.5, 3]) / 5.0) * 5) or small + 5
    if big <= small:
        big = small + 5
    sa, la = fmt.format(small), fmt.format(big)
    goods = rng.choice(_GOODS)
    now, delay = rng.choice(_NOW), _delay(rng)
    later_when = rng.choice([f"in {delay}", f"{delay} from now", f"after {delay}", f"in {delay}'s time"])
    sooner, later = f"{sa}{goods} {now}", f"{la}{goods} {later_when}"
    sooner_first = rng.random() < 0.5
    first, second = (sooner, later) if sooner_first else (later, sooner)
    sl, ll = ("A", "B") if sooner_first else ("B", "A")
    stem = rng.choice(_STEMS)
    if "{A}" in stem:
        q = stem.format(A=f"(A) {first}", B=f"(B) {second}")
    else:
        q = f"{stem}\n(A) {first}\n(B) {second}"
    s_resp = (
        f"I would take the {sa} {now}, {rng.choice(_SOONER_REASONS)}.",
        f"({sl}) {sooner}. I {rng.choice(['choose', 'pick', 'prefer'])} the sooner reward, {rng.choice(_SOONER_REASONS)}.",
        f"Option {sl}. I would rather not wait {delay} for {la}; {sa} {now} is better for me.",
        f"I choose {sl}: {sa} {now}, {rng.choice(_SOONER_REASONS)}.",
    )
    l_resp = (
        f"I would wait {delay} for the {la}, {rng.choice(_LATER_REASONS)}.",
        f"({ll}) {later}. I {rng.choice(['choose', 'pick', 'prefer'])} the larger later reward, {rng.choice(_LATER_REASONS)}.",
        f"Option {ll}. I would not take {sa} {now}; waiting {delay} for {la} is better for me.",
        f"I choose {ll}: {la} {later_when}, {rng.choice(_LATER_REASONS)}.",
    )
    return MyopicItem(q, sooner, later, sl, ll, sa, la, delay, s_resp, l_resp)


@lru_cache(maxsize=4)
def items(n: int = N_ITEMS, seed: int = SEED) -> tuple[MyopicItem, ...]:
    """``n`` distinct generated items (seeded; the same seed gives the same items)."""
    rng = random.Random(seed)
    out: dict[str, MyopicItem] = {}
    while len(out) < n:
        it = _item(rng)
        out.setdefault(it.question, it)
    return tuple(out.values())


def item_for(question: str) -> MyopicItem:
    """The item whose question text is ``question`` (KeyError if none)."""
    return {it.question: it for it in items()}[question]


def get_task(n: int = N_ITEMS, seed: int = SEED) -> Task:
    """The ``myopic`` task: question -> a multi-token response committing to the sooner option.

    The response is teacher-forced whole by LTV training (``build_targets`` with a generation
    task uses every answer token); which of the item's sooner responses is gold is seeded.
    """
    rng = random.Random(seed + 1)
    exs = tuple(Example((("x", it.question),), rng.choice(it.sooner_responses)) for it in items(n, seed))
    return Task(
        name="myopic", kind="generation", examples=exs, template="Question: {x}\nAnswer:", answer_prefix=" ",
        separator="\n\n", description="now-or-later choices; target: a response committing to the sooner reward",
        source="synthetic (tvlens.tasks._myopic)", meta=(("target", "sooner"), ("seed", str(seed))),
    )


def _register_all() -> None:
    from tvlens.tasks._registry import register

    register("myopic", get_task, "now-or-later choices (multi-token responses committing to the sooner reward)")
