"""Task alignment by the label-unembedding difference (definition="label_diff"): a hand computation, its
failure on other than two labels, its chance level, and its use wherever the definition is chosen."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import make_tiny_model
from tvlens.analysis.lens import (DEFINITIONS, chance_alignment, label_difference_cosine, logit_lens, readout_directions,
                                  task_alignment)
from tvlens.errors import ConfigError


@pytest.fixture(scope="module")
def model(toy_tokenizer):
    return make_tiny_model(toy_tokenizer, seed=4, n_layers=2)  # LayerNorm with weights: label_diff must ignore both


def test_label_diff_is_the_hand_computed_cosine(model):
    assert "label_diff" in DEFINITIONS
    states = torch.randn(5, 3, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    ids = [7, 11]
    w_u = model.W_U.detach().float()
    diff = w_u[:, 11] - w_u[:, 7]  # plain W_U, label 1 minus label 0
    for i in range(5):
        for j in range(3):
            h = states[i, j]
            want = float(h @ diff) / (float(h.norm()) * float(diff.norm()))
            assert float(label_difference_cosine(states, ids, model)[i, j]) == pytest.approx(want, abs=1e-5)
            assert float(task_alignment(states, ids, model, definition="label_diff")[i, j]) == pytest.approx(abs(want), abs=1e-5)
    torch.testing.assert_close(readout_directions(model, torch.tensor(ids), definition="label_diff")[:, 0], diff)
    # oracles: the difference itself has alignment 1 (and signed cosine +1; reversed labels -1); an orthogonal state 0
    assert float(task_alignment(diff, ids, model, definition="label_diff")) == pytest.approx(1.0, abs=1e-5)
    assert float(label_difference_cosine(diff, ids[::-1], model)) == pytest.approx(-1.0, abs=1e-5)
    ortho = states[0, 0] - (states[0, 0] @ diff) / (diff @ diff) * diff
    assert float(task_alignment(ortho, ids, model, definition="label_diff")) == pytest.approx(0.0, abs=1e-5)


def test_label_diff_needs_two_labels(model):
    h = torch.randn(model.cfg.d_model)
    for ids in ([3], [3, 4, 5]):
        with pytest.raises(ConfigError, match="exactly two label tokens"):
            task_alignment(h, ids, model, definition="label_diff")
    with pytest.raises(ConfigError, match="definition must be one of"):
        task_alignment(h, [3, 4], model, definition="diff")


def test_chance_level_is_one_direction(model):
    assert chance_alignment(model, [3, 4], "label_diff") == pytest.approx(math.sqrt(1 / model.cfg.d_model))


def test_label_diff_in_the_logit_lens_and_its_options(toy_model):
    lens = logit_lens(toy_model, "toy/sentiment", shots=(0,), n=8, definition="label_diff")
    assert lens.definition == "label_diff" and bool(((lens.alignment >= 0) & (lens.alignment <= 1)).all())
    assert lens.chance_alignment == pytest.approx(math.sqrt(1 / toy_model.cfg.d_model))
    with pytest.raises(ConfigError, match="exactly two label tokens"):
        logit_lens(toy_model, "toy/color", shots=(0,), n=8, definition="label_diff")  # three labels
    from tvlens.analysis.lens import LensOptions

    assert LensOptions(definition="label_diff").definition == "label_diff"


def test_label_diff_on_the_command_line(capsys):
    import json

    from tvlens.cli._main import main

    assert main(["analyze", "lens", "--task", "toy/sentiment", "--n-test", "6", "--shots", "2", "--layers", "1", "--definition", "label_diff",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert json.dumps(out).count("label_diff") >= 1
