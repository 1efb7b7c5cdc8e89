"""The opt-in record of a compute-once cache's use (tvlens._memo.record): hits, misses with their seconds, the nesting
of computes, and the seconds a later block took from earlier misses, each counted once."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tvlens._memo import Memo, record


@dataclass
class _Box(Memo):
    cache: dict = field(default_factory=dict)


def _fake(clock: list[float], seconds: float, value, inner=None):
    """A compute that moves the fake clock by ``seconds`` (after running ``inner``, a nested compute) and returns ``value``."""
    def compute():
        if inner is not None:
            inner()
        clock[0] += seconds
        return value

    return compute


@pytest.fixture
def clock(monkeypatch):
    import tvlens._memo as memo

    now = [0.0]
    monkeypatch.setattr(memo.time, "perf_counter", lambda: now[0])
    return now


def test_hits_and_misses_are_noted_with_a_miss_seconds(clock):
    box = _Box()
    with record() as rec:
        assert box.once(("a", 1), _fake(clock, 2.0, "A")) == "A"
        assert box.once(("a", 1), _fake(clock, 99.0, "other")) == "A"  # stored: not computed again
        assert box.once(7, _fake(clock, 0.5, "seven")) == "seven"  # any hashable key
    assert [(u.key, u.hit, u.seconds, u.source) for u in rec.uses] == [
        (("a", 1), False, 2.0, None), (("a", 1), True, 0.0, 0), (7, False, 0.5, None)]
    assert {u.memo for u in rec.uses} == {"_Box"} and {u.cache for u in rec.uses} == {id(box.cache)}
    assert clock[0] == 2.5


def test_nothing_is_recorded_without_an_active_recorder(clock):
    box = _Box()
    with record() as rec:
        box.once("in", _fake(clock, 1.0, 1))
    box.once("out", _fake(clock, 1.0, 2))
    box.once("in", _fake(clock, 1.0, 3))
    assert [u.key for u in rec.uses] == ["in"] and box.cache == {"in": 1, "out": 2}
    import tvlens._memo as memo

    assert memo._RECORDING.get() is None


def test_nested_computes_keep_their_nesting(clock):
    box = _Box()
    with record() as rec:
        inner = lambda: box.once(("inner",), _fake(clock, 3.0, "i"))  # noqa: E731
        box.once(("outer",), _fake(clock, 1.0, "o", inner))
        box.once(("outer",), _fake(clock, 1.0, "x", inner))
    outer, nested, hit = rec.uses
    assert (outer.key, outer.hit, outer.seconds, outer.within) == (("outer",), False, 4.0, ())  # its nested compute included
    assert (nested.key, nested.hit, nested.seconds, nested.within) == (("inner",), False, 3.0, (0,))
    assert (hit.hit, hit.source, hit.within) == (True, 0, ())


def test_a_failing_compute_is_noted_and_stores_nothing(clock):
    box = _Box()

    def boom():
        clock[0] += 1.5
        raise RuntimeError("no")

    with record() as rec:
        with pytest.raises(RuntimeError):
            box.once("k", boom)
        box.once("k", _fake(clock, 1.0, "v"))
        box.once("k", _fake(clock, 1.0, "w"))
    assert [(u.hit, u.seconds, u.failed) for u in rec.uses] == [(False, 1.5, True), (False, 1.0, False), (True, 0.0, False)]
    assert rec.uses[2].source == 1 and rec._running == []


def test_reused_counts_each_entry_once_and_nested_seconds_not_twice(clock):
    box, other = _Box(), _Box()
    with record() as rec:
        # an earlier block: "outer" (5 s, of which "inner" 3 s) and "alone" (2 s); "elsewhere" in another memo (1 s)
        inner = lambda: box.once("inner", _fake(clock, 3.0, "i"))  # noqa: E731
        box.once("outer", _fake(clock, 2.0, "o", inner))
        box.once("alone", _fake(clock, 2.0, "a"))
        other.once("inner", _fake(clock, 1.0, "e"))  # the same key in another cache: another entry
        start = len(rec)
        box.once("outer", _fake(clock, 0.0, None))
        box.once("inner", _fake(clock, 0.0, None))  # taken too, but its 3 s are in outer's 5 s
        box.once("outer", _fake(clock, 0.0, None))  # a second hit on the same entry
        box.once("new", _fake(clock, 4.0, "n"))  # computed in this block: not reused
        box.once("new", _fake(clock, 0.0, None))
        middle = len(rec)
        box.once("inner", _fake(clock, 0.0, None))  # alone in this block: its own 3 s count
        other.once("inner", _fake(clock, 0.0, None))
        box.once("alone", _fake(clock, 0.0, None))
    assert rec.reused(start, middle) == {0: 5.0}
    assert rec.reused(middle) == {1: 3.0, 2: 2.0, 3: 1.0}
    assert rec.reused(0, start) == {}  # nothing before the first block


def test_a_value_stored_before_the_recording_has_no_source(clock):
    box = _Box()
    box.once("early", _fake(clock, 1.0, "e"))
    with record() as rec:
        box.once("early", _fake(clock, 1.0, None))
    assert rec.uses[0].hit and rec.uses[0].source is None and rec.reused(0) == {} and rec.reused(1) == {}


def test_an_inner_record_takes_its_block(clock):
    box = _Box()
    with record() as outer:
        box.once("a", _fake(clock, 1.0, 1))
        with record() as inner:
            box.once("b", _fake(clock, 1.0, 2))
        box.once("c", _fake(clock, 1.0, 3))
    assert [u.key for u in outer.uses] == ["a", "c"] and [u.key for u in inner.uses] == ["b"]
