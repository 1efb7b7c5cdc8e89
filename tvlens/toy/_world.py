"""The synthetic world of the embedded model: its vocabulary and its task functions.

Context:
    The embedded ("toy") model is trained from scratch on sequences of input -> output
    demonstrations of these tasks. The world is fixed (seeded by ``WORLD_SEED``, independent of
    the training seed), so every checkpoint of the toy model speaks the same language and the
    same task names mean the same functions.

Intuition:
    The tasks mirror the kinds in the paper: a lookup (``capital``), a surface map
    (``capitalize``), a pairing (``antonym``), an ordering (``successor``), arithmetic-like maps
    on numbers (``add3``, ``double``), binary / 3-way / 6-way classification (``sentiment``,
    ``color``, ``category``, ``parity``) and pair-input classification like SNLI / RTE
    (``compare``, ``is_antonym``, ``same_category``). Frequent ``echo_*`` tasks (repeat the last
    input word, one per input domain) play the role of a language model's default continuation:
    with no demonstrations the model echoes, so zero-shot accuracy on the real tasks is low, as
    in the paper.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

WORLD_SEED = 20250928
N_WORDS = 96
N_NUMBERS = 48

PAD, BOS, UNK, ARROW, SEP = "<pad>", "<bos>", "<unk>", "->", ","

SENTIMENT_LABELS = ("positive", "negative")
COLOR_LABELS = ("red", "green", "blue")
CATEGORY_LABELS = ("animal", "food", "place", "tool", "person", "time")
PARITY_LABELS = ("even", "odd")
COMPARE_LABELS = ("true", "maybe", "false")
MATCH_LABELS = ("true", "false")

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class ToyTaskDef:
    """One synthetic task: its name, kind and its table of input -> output."""

    name: str
    kind: str  # "generation" | "classification"
    arity: int  # 1 = single input word, 2 = pair input
    table: tuple[tuple[tuple[str, ...], str], ...]  # ((inputs...), output)
    label_words: tuple[str, ...] | None = None
    description: str = ""
    evaluated: bool = True  # False for the "echo" priors, which are never benchmark tasks


def _pseudo_words(rng: random.Random, n: int, syllables: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


@cache
def world() -> dict[str, ToyTaskDef]:
    """Build every task of the toy world (deterministic, cached)."""
    rng = random.Random(WORLD_SEED)
    taken: set[str] = set()
    words = _pseudo_words(rng, N_WORDS, 2, taken)
    cities = _pseudo_words(rng, N_WORDS, 3, taken)
    numbers = [str(i) for i in range(N_NUMBERS)]

    shuffled = words[:]
    rng.shuffle(shuffled)
    antonym = {}
    for a, b in zip(shuffled[0::2], shuffled[1::2]):
        antonym[a], antonym[b] = b, a
    capital = dict(zip(words, rng.sample(cities, len(cities))))
    order = words[:]
    rng.shuffle(order)
    successor = {w: order[(i + 1) % len(order)] for i, w in enumerate(order)}

    def labels(labs: tuple[str, ...]) -> dict[str, str]:
        seq = [labs[i % len(labs)] for i in range(N_WORDS)]
        rng.shuffle(seq)
        return dict(zip(words, seq))

    sentiment, color, category = labels(SENTIMENT_LABELS), labels(COLOR_LABELS), labels(CATEGORY_LABELS)

    def single(d: dict[str, str]) -> tuple[tuple[tuple[str, ...], str], ...]:
        return tuple(((k,), v) for k, v in d.items())

    compare = tuple(
        ((a, b), "true" if a == b else ("maybe" if int(b) > int(a) else "false"))
        for a in numbers
        for b in numbers
    )
    is_antonym = tuple(
        ((a, b), "true" if antonym[a] == b else "false") for a in words for b in words
    )
    same_category = tuple(
        ((a, b), "true" if category[a] == category[b] else "false") for a in words for b in words
    )
    defs = [
        ToyTaskDef("capital", "generation", 1, single(capital), None, "word -> its capital city (lookup)"),
        ToyTaskDef("capitalize", "generation", 1, single({w: w.capitalize() for w in words}), None, "word -> Word (surface map)"),
        ToyTaskDef("antonym", "generation", 1, single(antonym), None, "word -> its antonym (pairing)"),
        ToyTaskDef("successor", "generation", 1, single(successor), None, "word -> the next word of a fixed order"),
        ToyTaskDef("add3", "generation", 1, single({n: str((int(n) + 3) % N_NUMBERS) for n in numbers}), None, f"n -> n + 3 mod {N_NUMBERS}"),
        ToyTaskDef("double", "generation", 1, single({n: str((2 * int(n)) % N_NUMBERS) for n in numbers}), None, f"n -> 2n mod {N_NUMBERS}"),
        ToyTaskDef("sentiment", "classification", 1, single(sentiment), SENTIMENT_LABELS, "word -> positive / negative (binary, like SST-2)"),
        ToyTaskDef("color", "classification", 1, single(color), COLOR_LABELS, "word -> red / green / blue (3-way)"),
        ToyTaskDef("category", "classification", 1, single(category), CATEGORY_LABELS, "word -> one of 6 categories (6-way, like TREC)"),
        ToyTaskDef("parity", "classification", 1, single({n: PARITY_LABELS[int(n) % 2] for n in numbers}), PARITY_LABELS, "n -> even / odd"),
        ToyTaskDef("compare", "classification", 2, compare, COMPARE_LABELS, "a b -> true (a = b) / maybe (b > a) / false (b < a), like SNLI"),
        ToyTaskDef("is_antonym", "classification", 2, is_antonym, MATCH_LABELS, "a b -> true if b is the antonym of a, like RTE"),
        ToyTaskDef("same_category", "classification", 2, same_category, MATCH_LABELS, "a b -> true if a and b share a category, like RTE"),
    ]
    # The echo priors: repeat the (last) input word. One per input domain, so that with no
    # demonstrations echoing beats every real task on every domain, as a language model's
    # default continuation beats any one task; never benchmark tasks.
    echo = [
        ("echo_word", tuple(((w,), w) for w in words)),
        ("echo_number", tuple(((n,), n) for n in numbers)),
        ("echo_word_pair", tuple(((a, b), b) for a in words for b in words)),
        ("echo_number_pair", tuple(((a, b), b) for a in numbers for b in numbers)),
    ]
    for name, table in echo:
        arity = len(table[0][0])
        defs.append(ToyTaskDef(name, "generation", arity, table, None, "repeat the last input word (training prior, not a benchmark)", evaluated=False))
    return {d.name: d for d in defs}


def task_token(name: str) -> str:
    """The instruction token of a task (used only in training sequences)."""
    return f"<{name}>"


@cache
def vocabulary() -> tuple[str, ...]:
    """Every token of the toy tokenizer, in id order (specials first)."""
    toks: list[str] = [PAD, BOS, UNK, ARROW, SEP]
    toks += [task_token(n) for n in world()]
    seen = set(toks)
    for d in world().values():
        for inputs, out in d.table:
            for t in (*inputs, out):
                if t not in seen:
                    seen.add(t)
                    toks.append(t)
    return tuple(toks)
