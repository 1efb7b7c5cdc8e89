"""The claims table: verdicts follow from the numbers, rows reproduce from their commands, the page escapes."""

import json
import math

import pytest

import tvlens as tv
from tvlens._claims import CLAIMS, THRESHOLDS
from tvlens._claims._verdict import diff_interval, fisher_interval, share_interval
from tvlens.cli import main

EPS = 1e-6

# numbers on each side of every claim's threshold: (numbers that hold, numbers that fail)
T = THRESHOLDS
SIDES = {
    "ltv_beats_baselines": ({"worst_gap": T["ltv_margin"] + EPS}, {"worst_gap": T["ltv_margin"]}),
    "ltv_matches_icl": ({"worst_task_gap": T["icl_margin"]}, {"worst_task_gap": T["icl_margin"] - EPS}),
    "ltv_every_scenario": ({"worst_gap": T["ltv_margin"] + EPS}, {"worst_gap": T["ltv_margin"]}),
    "key_head_ablation": ({"margin": T["ablation_margin"]}, {"margin": T["ablation_margin"] - EPS}),
    "one_pass_saliency": ({"rho": T["saliency_rho"]}, {"rho": T["saliency_rho"] - EPS}),
    "ov_reconstruction": ({"share": T["ov_share"], "gain": 0.5}, {"share": T["ov_share"] - EPS, "gain": 0.5}),
    "key_heads_sink_less": ({"sink_margin": T["sink_margin"] + EPS, "final_margin": EPS},
                            {"sink_margin": T["sink_margin"], "final_margin": EPS}),
    "key_heads_location": ({"ratio": T["location_ratio"], "span": T["location_min_layers"]},
                           {"ratio": T["location_ratio"] - EPS, "span": T["location_min_layers"]}),
    "decoded_early_late": ({"margin": T["decoded_margin"] + EPS}, {"margin": T["decoded_margin"]}),
    "linear_reconstruction": ({"share": T["linear_share"] + EPS}, {"share": T["linear_share"]}),
    "rotation_aligns_early": ({"gain": T["rotation_margin"] + EPS}, {"gain": T["rotation_margin"]}),
    "cos_rises_with_depth": ({"rho": T["rise_rho"]}, {"rho": T["rise_rho"] - EPS}),
    "transition_matches_icl": ({"transition": 10, "icl_layer": 13, "n_layers": 30},
                               {"transition": 10, "icl_layer": 14, "n_layers": 30}),
    "task_clusters": ({"gap": T["cluster_gap"]}, {"gap": T["cluster_gap"] - EPS}),
    "little_transfer": ({"gain": T["transfer_max"]}, {"gain": T["transfer_max"] + EPS}),
    "composition": ({"gap": T["composition_margin"] + EPS}, {"gap": T["composition_margin"]}),
}
# numbers that cannot decide: each claim's "not testable" case
UNDECIDED = {
    "ov_reconstruction": {"share": None, "gain": 0.0},
    "key_heads_location": {"ratio": 3.0, "span": T["location_min_layers"] - 1},
    "transition_matches_icl": {"transition": None, "icl_layer": 3, "n_layers": 30},
    "composition": {"gap": None},
    "key_heads_sink_less": {"sink_margin": float("nan"), "final_margin": 0.1},
}


def test_every_claim_has_a_threshold_test():
    assert set(SIDES) == set(CLAIMS)


@pytest.mark.parametrize("key", sorted(CLAIMS))
def test_the_verdict_follows_the_numbers_across_the_threshold(key):
    good, bad = SIDES[key]
    assert CLAIMS[key].judge(good)[0] == "holds", CLAIMS[key].judge(good)
    assert CLAIMS[key].judge(bad)[0] == "fails", CLAIMS[key].judge(bad)
    if key in UNDECIDED:
        assert CLAIMS[key].judge(UNDECIDED[key])[0] == "not testable"
    else:  # a claim whose single number is missing
        number = next(iter(good))
        assert CLAIMS[key].judge({**good, number: None})[0] == "not testable"


def test_intervals_contain_their_point_and_widen_with_fewer_samples():
    lo, hi = diff_interval(30, 40, 20, 40)
    assert lo < 0.25 < hi
    lo2, hi2 = diff_interval(3, 4, 2, 4)
    assert hi2 - lo2 > hi - lo
    assert diff_interval(10, 10, 0, 10)[1] <= 1.0 + 1e-12
    assert share_interval(3, 5)[0] < 0.6 < share_interval(3, 5)[1]
    assert fisher_interval(0.5, 3) is None
    lo, hi = fisher_interval(0.8, 30)
    assert lo < 0.8 < hi and hi < 1


@pytest.fixture(scope="module")
def toy_claims():
    return tv.claims(tv.load_model("toy"), progress=False)


@pytest.mark.slow
def test_the_toy_table_has_every_claim_with_a_verdict_from_its_numbers(toy_claims):
    rows = {r["key"]: r for r in toy_claims.rows}
    assert list(rows) == list(CLAIMS)
    for key, r in rows.items():
        assert r["verdict"] == CLAIMS[key].judge(r["numbers"])[0]
        assert r["verdict"] == "not testable" or (r["measured"] is not None and math.isfinite(r["measured"]))
        if r["interval"] is not None:
            assert r["interval"][0] - 1e-9 <= r["measured"] <= r["interval"][1] + 1e-9, (key, r)
        assert r["command"].startswith("tvlens claims --model toy --tasks toy/antonym toy/sentiment --only " + key)
    # figures documented in docs/results.md (the embedded model, seed 0)
    assert rows["one_pass_saliency"]["measured"] == pytest.approx(0.965, abs=0.005)
    assert rows["key_heads_location"]["verdict"] == "not testable"  # 3 layers after the injection layer
    payload = json.loads(json.dumps(toy_claims.payload(), allow_nan=False))
    assert payload["model"] == "toy" and len(payload["claims"]) == len(CLAIMS)
    assert set(payload["claims"][0]) >= {"claim", "paper", "measured", "interval", "verdict", "reason", "tasks", "layers", "command"}
    df = toy_claims.to_frame()
    assert len(df) == len(CLAIMS) and set(df["verdict"]) <= {"holds", "fails", "not testable"}
    assert len(toy_claims.plot().data) == 1


@pytest.mark.slow
@pytest.mark.parametrize("key", ["ltv_matches_icl", "one_pass_saliency", "cos_rises_with_depth"])
def test_a_rows_command_reproduces_its_number(toy_claims, key, capsys):
    row = next(r for r in toy_claims.rows if r["key"] == key)
    argv = row["command"].split()[1:]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    (again,) = out["claims"]
    assert again["key"] == key and again["verdict"] == row["verdict"]
    assert again["measured"] == pytest.approx(row["measured"], abs=1e-4)  # the JSON rounds to 4 decimals


def test_bad_claims_arguments_are_refused_before_any_work(capsys, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(tv, "load_model", boom)
    assert main(["claims", "--only", "no_such_claim", "--json"]) != 0
    assert "unknown claims" in capsys.readouterr().out
    assert main(["claims", "--n", "0", "--json"]) != 0
    with pytest.raises(tv.errors.ConfigError, match="at least one task"):
        tv.claims(object(), [])


def test_the_page_escapes_what_a_user_supplied(tmp_path):
    from tvlens._claims import ClaimsResult

    row = {"key": "k", "claim": "<script>alert(1)</script>", "paper": "p", "measured": 0.5, "interval": (0.4, 0.6),
           "verdict": "holds", "reason": "r", "detail": "<b>task</b>", "numbers": {}, "tasks": ("<t>",), "layers": (1,),
           "command": "tvlens claims --tasks <t>", "source": "s"}
    res = ClaimsResult("m<odel>", (row,), 1.0)
    page = res.write_html(tmp_path / "c.html")
    text = open(page, encoding="utf-8").read()
    assert "<script>" not in text and "&lt;script&gt;" in text and "&lt;b&gt;task&lt;/b&gt;" in text
    assert "m&lt;odel&gt;" in text


@pytest.mark.slow
def test_claims_rotation_is_the_sections_fit_with_the_lens_icl_layer(toy_model):
    # the claims read the registered rotation analysis (the report's section) instead of fitting every layer again;
    # the oracle is the direct call with the lens
    import torch

    from tvlens._claims import ClaimsContext
    from tvlens.analysis import rotation_vs_stretch

    cc = ClaimsContext(toy_model, "toy", (tv.tasks.get("toy/antonym"),), 2)
    got = cc.rotation()
    (section,) = cc.analysis("rotation")
    lens = cc.analysis("lens")[0]
    ref = rotation_vs_stretch(toy_model, cc.analysis_context().vectors_by_layer(), cc.task, lens=lens)
    assert got.icl_layer == ref.icl_layer == lens.icl_beats_zero_shot_layer and section.icl_layer is None
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731 - wall time differs
    assert drop(got.rows) == drop(ref.rows) and got.layers == ref.layers and torch.equal(got.correct, ref.correct)
    assert got.transition_layer == ref.transition_layer and got.decoded_theta == ref.decoded_theta
    assert cc.rotation() is got  # once
