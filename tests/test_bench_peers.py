"""The peer benchmarks' contenders compute the same thing as tvlens (no timing is asserted here).

A tiny random Llama (``transformers``) is loaded into tvlens through a Hugging Face folder, so the
peers and tvlens hold the same weights; a number task with inputs and answers of 1-3 tokens makes
the batches left-padded and the answers teacher-forced over several tokens.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import tvlens as tv
from tvlens import bench_peers as bp
from tvlens.errors import IncompatibleModelError
from tvlens.ltv._objective import NaiveObjective, build_targets
from tvlens.sites import Site


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tvlens model, the same LlamaForCausalLM) with the embedded model's tokenizer."""
    import transformers

    tok = tv.load_model("toy").tokenizer
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok.get_vocab()), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights, so a wrong fold would show
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp("tiny-llama")
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return tv.load_model(folder), hf.requires_grad_(False)


@pytest.fixture(scope="module")
def task():
    """Number sequences of 1-3 tokens mapped to sequences of 1-2 tokens (left padding, multi-token answers)."""
    pairs = [(" ".join(str((i + j) % 48) for j in range(1 + i % 3)), " ".join(str((7 * i + j) % 48) for j in range(1 + i % 2)))
             for i in range(60)]
    return tv.tasks.from_pairs("peers-numbers", pairs)


def test_inputs_are_padded_and_multi_token(tiny, task):
    _, _, s = bp.ltv_inputs(tiny[0], 2, batch=8, task=task)
    assert (s.mask == 0).any() and len(s.tgt_tok) > len(s.tokens)


def test_transformers_model_matches_tvlens(tiny, task):
    model, hf = tiny
    _, _, s = bp.ltv_inputs(model, 2, batch=8, task=task)
    assert bp.check_same_function(model, hf, s.tokens, s.mask) < bp.FUNCTION_TOL


def test_different_weights_are_refused(tiny, task):
    model, hf = tiny
    _, _, s = bp.ltv_inputs(model, 2, batch=4, task=task)
    other = type(hf)(hf.config).eval()
    with pytest.raises(IncompatibleModelError, match="same weights"):
        bp.check_same_function(model, other, s.tokens, s.mask)


def test_peer_losses_equal_the_naive_objective(tiny, task):
    """Oracle: tvlens's reference objective (a full forward, theta hooked in) on the same rows and theta."""
    model, hf = tiny
    tb, idx, s = bp.ltv_inputs(model, 2, batch=8, task=task)
    theta = (0.5 * torch.randn(1, model.cfg.d_model, generator=torch.Generator().manual_seed(1))).requires_grad_()
    loss, _, _ = NaiveObjective(model, tb, (Site(1, -1),)).loss(theta, idx)
    (grad,) = torch.autograd.grad(loss, [theta])
    vec = theta.detach()[0].clone().requires_grad_()
    hook_loss, hook_grad = bp.hf_hook_step(hf, s, vec, layer=1)
    assert abs(hook_loss - loss.item()) < 1e-5
    torch.testing.assert_close(hook_grad, grad[0], atol=1e-5, rtol=1e-4)
    if importlib.util.find_spec("nnsight") is not None:
        from nnsight import NNsight

        nn_loss, nn_grad = bp.nnsight_step(NNsight(hf), s, vec, layer=1)
        assert abs(nn_loss - loss.item()) < 1e-5
        torch.testing.assert_close(nn_grad, grad[0], atol=1e-5, rtol=1e-4)
    # theta matters: a zero vector gives another loss
    zero_loss, _ = bp.hf_hook_step(hf, s, torch.zeros_like(vec).requires_grad_(), layer=1)
    assert abs(zero_loss - loss.item()) > 1e-3


def test_ltv_entries_agree(tiny, task):
    results = bp.bench_ltv_peers(tiny[0], tiny[1], 2, calls=1, layer=1, batch=8, task=task, label="tiny")
    peers = {r.peer: r for r in results}
    assert peers["transformers forward_pre_hook"].status == "ok"
    for r in results:
        if r.status != "skipped":
            assert r.max_abs_diff <= bp.VALUE_TOL and r.tvlens_value == pytest.approx(r.peer_value, abs=bp.VALUE_TOL)
            assert r.ratio == r.peer_s / r.tvlens_s and r.details["grad_max_abs_diff"] < 1e-4
    assert peers["nnsight trace"].status == ("skipped" if importlib.util.find_spec("nnsight") is None else "ok")


def test_aie_loop_equals_aie_batched_on_every_head(tiny):
    model, hf = tiny
    r = bp.bench_aie_peer(model, hf, n_prompts=4, shots=4, task="toy/antonym", label="tiny")
    assert r.status == "ok" and r.details["loop_heads"] == r.details["heads"] == 12 and not r.note
    assert r.max_abs_diff < 1e-6
    # the loop patches something: a head's AIE is not zero
    batch = bp.corrupted_prompts(model, shots=4, n=4, task="toy/antonym")
    mean_z = 5 * torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(0))
    aie = bp.hf_aie_loop(hf, batch.tokens, batch.attention_mask, batch.last_index, batch.answer_ids, mean_z, [(2, 3)])
    assert aie.abs().max() > 0


def test_aie_sampled_loop_says_so(tiny):
    r = bp.bench_aie_peer(tiny[0], tiny[1], n_prompts=2, shots=4, loop_heads=3, task="toy/antonym", label="tiny")
    assert r.details["loop_heads"] == 3 and "extrapolated" in r.note and r.status == "ok"
    assert bp.spread_heads([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)], 3) == [(0, 0), (1, 0), (2, 0)]


def test_absent_nnsight_is_skipped_with_a_note(tiny, task, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nnsight" else real(name, *a))
    results = bp.bench_ltv_peers(tiny[0], tiny[1], 0, calls=1, layer=1, batch=4, task=task, label="tiny")
    skipped = [r for r in results if r.status == "skipped"]
    assert [r.peer for r in skipped] == ["nnsight trace"] and "pip install nnsight" in skipped[0].note
    assert skipped[0].ratio is None and skipped[0].as_dict()["peer_s"] is None


def test_absent_transformers_skips_every_entry(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    results = bp.run_peer_benchmarks(quick=True)
    assert results and all(r.status == "skipped" and "transformers" in r.note for r in results)


def test_mismatch_is_marked():
    r = bp._judge("x", "p", 1.0, 2.0, 1.0, 1.1, 0.1, {})
    assert r.status == "mismatch" and "differ" in r.note and r.ratio == 2.0


@pytest.mark.real_model
def test_smollm2_peers_agree(smollm2):
    """The real model: its transformers twin is the same function, and the zero-shot LTV step's losses agree."""
    hf = bp.hf_smollm2()
    tb = build_targets(smollm2, tv.make_prompts(tv.make_splits(tv.tasks.get("capitalize")), "train", k=0, n=4))
    assert bp.check_same_function(smollm2, hf, tb.tokens, tb.attention_mask) < bp.FUNCTION_TOL
    results = bp.bench_ltv_peers(smollm2, hf, 0, calls=1, batch=4)
    assert all(r.status in ("ok", "skipped") for r in results) and results[0].status == "ok"


def test_cli_prints_each_peer_beside_tvlens(monkeypatch):
    import argparse

    from tvlens.cli._commands import cmd_bench

    rows = [bp._judge("ltv_step_x_0shot", "transformers forward_pre_hook", 1.0, 4.0, 2.5, 2.5, 0.0, {}),
            bp.PeerResult("ltv_step_x_0shot", "nnsight trace", "skipped", 1.0, None, 2.5, note="skipped: nnsight absent")]
    monkeypatch.setattr(bp, "run_peer_benchmarks", lambda quick=False: rows)
    payload, text = cmd_bench(argparse.Namespace(peers=True, quick=True))
    assert [r["status"] for r in payload["peers"]] == ["ok", "skipped"] and payload["peers"][0]["ratio"] == 4.0
    lines = text.splitlines()
    assert "4.0x" in lines[1] and "2.500000" in lines[1] and lines[2].endswith("skipped (skipped: nnsight absent)")
