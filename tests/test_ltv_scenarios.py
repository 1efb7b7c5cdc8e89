"""The six scenarios of the paper's main table train and evaluate on the embedded model."""

import pytest

import tvlens as tv

CONFIG = tv.LTVConfig()  # the default recipe


def test_scenarios_for_the_papers_depth():
    s = tv.paper_scenarios(32)
    assert [str(x) for x in s["1_mid_last"].sites] == ["L16@-1"]
    assert [x.layer for x in s["4_every4_last"].sites] == list(range(0, 32, 4))
    assert len(s["5_every2_last5"].sites) == 16 * 5 and s["6_mid_last_8shot"].shots == 8


@pytest.mark.parametrize("name", list(tv.paper_scenarios(4)))
def test_each_scenario_trains_and_evaluates_on_the_toy_model(toy_model, name):
    sc = tv.paper_scenarios(toy_model.cfg.n_layers)[name]
    splits = tv.make_splits(tv.tasks.get("toy/sentiment"))
    # zero-shot toy prompts are 3 tokens long: positions -5, -4 and 4 are clipped to real tokens
    res = tv.train_ltv(toy_model, splits.task, sites=sc.sites, shots=sc.shots, config=CONFIG, splits=splits,
                       out_of_range="clip", progress=False)
    test = tv.make_prompts(splits, "test", k=sc.shots)
    base = tv.evaluate(toy_model, test).accuracy
    steered = tv.evaluate(toy_model, test, intervention=tv.steering(toy_model, res.vector)).accuracy
    assert res.vector.sites == sc.sites
    if sc.shots == 0:
        assert steered >= base + 0.5  # zero-shot sentiment is near 0; the vector solves it
    else:
        assert steered >= base - 0.05  # ICL is already near 1; the vector must not hurt it
