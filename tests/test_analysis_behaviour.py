"""The behaviour analysis on the embedded model (a smoke test: its world has no myopic words, so the
tokenizer maps them to <unk> and the verdicts say nothing about behaviour; SmolLM2 is the real run)."""

import warnings

import pytest

import tvlens as tv
from tvlens.analysis._registry import get as get_analysis
from tvlens.analysis.behaviour import BehaviourResult, behaviour
from tvlens.errors import ConfigError
from tvlens.tasks._judge import judge
from tvlens.tasks._myopic import item_for


@pytest.fixture(scope="module")
def result():
    model = tv.load_model("toy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tv.errors.TvlensWarning)
        cfg = tv.LTVConfig(max_epochs=1, epoch_size=16, batch_size=8, n_train=32, n_val=8)
        return behaviour(model, methods=("zero_shot", "ltv"), layer=2, n=6, max_new_tokens=4, ltv_config=cfg,
                         batch_size=4, n_samples=6)


def test_counts_and_samples_agree_with_the_judge(result):
    assert result.methods == ("zero_shot", "ltv") and all(sum(c) == 6 for c in result.counts)
    for m, c in zip(result.methods, result.counts):
        got = [s[3] for s in result.samples if s[0] == m]
        assert len(got) == 6 and tuple(got.count(v) for v in ("sooner", "later", "unclear")) == c
        assert all(judge(s[2], item_for(s[1])) == s[3] for s in result.samples if s[0] == m)
        lo, hi = result.interval(m)
        assert 0 <= lo <= result.fraction(m) <= hi <= 1


def test_result_views_and_round_trip(result, tmp_path):
    df = result.to_frame()
    assert list(df["method"]) == ["zero_shot", "ltv"] and set(df.columns) >= {"sooner", "later_lo", "unclear_hi"}
    assert abs(df[["sooner", "later", "unclear"]].sum(axis=1) - 1).max() < 1e-9
    assert "zero_shot" in result.text() and result.payload()["methods"]["ltv"]["n"] == 6
    assert BehaviourResult.load(result.save(tmp_path / "b.json")).payload() == result.payload()
    result.plot()


def test_registered_and_checks_its_inputs():
    assert get_analysis("behaviour").result is BehaviourResult
    model = tv.load_model("toy")
    with pytest.raises(ConfigError, match="myopic"):
        behaviour(model, task="toy/antonym")
    with pytest.raises(ConfigError, match="choose from"):
        behaviour(model, methods=("nope",))
