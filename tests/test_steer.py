import pytest
import torch

import tvlens as tv
from tests.conftest import assert_no_hooks_left
from tests.test_vector import make_vector

TEXTS = ["kevi -> vitilu , keso ->", "kevi ->", "1 2 -> maybe , 3 3 ->"]


def no_hooks_left(model) -> bool:
    try:
        assert_no_hooks_left(model)  # TransformerLens and torch hooks, and the instance's __dict__
    except AssertionError:
        return False
    return True


def test_zero_vector_changes_nothing(tiny_model):
    v = make_vector(tiny_model, sites=((0, -1), (1, 2)))
    zero = v.with_values(torch.zeros_like(v.values))
    toks = tiny_model.to_tokens(TEXTS[0])
    with torch.no_grad():
        base = tiny_model(toks)
        with tv.steer(tiny_model, zero):
            steered = tiny_model(toks)
    assert torch.equal(base, steered)


def test_positions_before_the_site_are_untouched(tiny_model):
    v = make_vector(tiny_model, sites=((1, -2),))
    toks = tiny_model.to_tokens(TEXTS[0])
    with torch.no_grad():
        base = tiny_model(toks)
        with tv.steer(tiny_model, v):
            steered = tiny_model(toks)
    n = toks.shape[1]
    assert torch.equal(base[:, : n - 2], steered[:, : n - 2])
    assert not torch.allclose(base[:, n - 2 :], steered[:, n - 2 :])


def test_steer_equals_a_hand_written_hook(tiny_model):
    v = make_vector(tiny_model, sites=((1, -1), (1, 1)))
    toks = tiny_model.to_tokens(TEXTS[0])

    def hook(x, hook):
        x = x.clone()
        x[:, -1] += 2.0 * v.values[0]
        x[:, 1] += 2.0 * v.values[1]
        return x

    with torch.no_grad():
        ref = tiny_model.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_resid_pre", hook)])
        with tv.steer(tiny_model, v, scale=2.0):
            got = tiny_model(toks)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches_are_steered_per_prompt(tiny_model, side):
    v = make_vector(tiny_model, sites=((0, -1), (1, 1), (1, -2)))
    batch = tv.tokenize_prompts(tiny_model, TEXTS, [" x"] * 3, padding_side=side)
    with torch.no_grad(), tv.steer(tiny_model, v):
        logits = tiny_model(batch.tokens, attention_mask=batch.attention_mask)
        for i, text in enumerate(TEXTS):
            alone = tiny_model(tiny_model.to_tokens(text))[0, -1]
            torch.testing.assert_close(logits[i, batch.last_index[i]], alone, atol=1e-4, rtol=1e-4)


def test_run_with_cache_sees_the_vector(tiny_model):
    v = make_vector(tiny_model, sites=((1, -1),))
    toks = tiny_model.to_tokens(TEXTS[1])
    _, clean = tiny_model.run_with_cache(toks)
    with tv.steer(tiny_model, v):
        _, steered = tiny_model.run_with_cache(toks)
    delta = steered["blocks.1.hook_resid_pre"] - clean["blocks.1.hook_resid_pre"]
    torch.testing.assert_close(delta[0, -1], v.values[0])
    assert delta[0, :-1].abs().max() == 0


@pytest.mark.parametrize("policy", ["prompt", "every_token"])
def test_generation_same_tokens_with_and_without_kv_cache(tiny_model, policy):
    v = make_vector(tiny_model, sites=((1, -1), (0, 1)))
    v = v.with_values(v.values * 3)
    outs = []
    for cache in (True, False):
        with tv.steer(tiny_model, v, generation=policy):
            outs.append(tiny_model.generate(TEXTS[:2], max_new_tokens=6, do_sample=False, use_past_kv_cache=cache,
                                            verbose=False, padding_side="left", return_type="tokens"))
    assert torch.equal(outs[0], outs[1])
    plain = tiny_model.generate(TEXTS[:2], max_new_tokens=6, do_sample=False, verbose=False, padding_side="left",
                                return_type="tokens")
    assert not torch.equal(plain, outs[0])
    assert no_hooks_left(tiny_model)


def test_generation_policies_differ(tiny_model):
    v = make_vector(tiny_model, sites=((1, -1),))
    v = v.with_values(v.values * 5)
    got = {}
    for policy in ("prompt", "every_token"):
        with tv.steer(tiny_model, v, generation=policy):
            got[policy] = tiny_model.generate(TEXTS[1], max_new_tokens=6, do_sample=False, verbose=False, return_type="tokens")
    assert not torch.equal(got["prompt"], got["every_token"])


def test_no_hook_survives_success_exception_or_interrupt(tiny_model):
    v = make_vector(tiny_model)
    toks = tiny_model.to_tokens(TEXTS[1])
    with tv.steer(tiny_model, v):
        assert not no_hooks_left(tiny_model)
        tiny_model(toks)
    assert no_hooks_left(tiny_model)
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc):
            with tv.steer(tiny_model, v):
                tiny_model(toks)
                raise exc("boom")
        assert no_hooks_left(tiny_model)


def test_nested_steers_compose_and_unwind(tiny_model):
    a, b = make_vector(tiny_model, seed=1), make_vector(tiny_model, seed=2)
    both = a.with_values(a.values + b.values)
    toks = tiny_model.to_tokens(TEXTS[0])
    with torch.no_grad():
        with tv.steer(tiny_model, a), tv.steer(tiny_model, b):
            nested = tiny_model(toks)
        with tv.steer(tiny_model, both):
            summed = tiny_model(toks)
    torch.testing.assert_close(nested, summed, atol=1e-5, rtol=1e-5)
    assert no_hooks_left(tiny_model)


def test_replace_operation_overwrites_the_state(tiny_model):
    v = make_vector(tiny_model, sites=((1, -1),))
    rep = tv.TaskVector(v.values, v.sites, operation="replace", d_model=v.d_model, n_layers=v.n_layers)
    _, cache = tiny_model.run_with_cache(tiny_model.to_tokens(TEXTS[0]))
    with tv.steer(tiny_model, rep):
        _, steered = tiny_model.run_with_cache(tiny_model.to_tokens(TEXTS[0]))
    torch.testing.assert_close(steered["blocks.1.hook_resid_pre"][0, -1], v.values[0])


def test_evaluate_with_steering(tiny_model):
    v = make_vector(tiny_model)
    ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=1)
    base = tv.evaluate(tiny_model, ps)
    steered = tv.evaluate(tiny_model, ps, intervention=tv.steering(tiny_model, v))
    zero = tv.evaluate(tiny_model, ps, intervention=tv.steering(tiny_model, v.with_values(torch.zeros_like(v.values))))
    assert not torch.allclose(base.gold_logprob, steered.gold_logprob)
    torch.testing.assert_close(base.gold_logprob, zero.gold_logprob)
    assert no_hooks_left(tiny_model)


def test_nested_steers_exited_out_of_order_unwind_cleanly(tiny_model):
    a, b = make_vector(tiny_model, seed=1), make_vector(tiny_model, seed=2)
    toks = tiny_model.to_tokens(TEXTS[0])
    with torch.no_grad():
        plain = tiny_model(toks)
        with tv.steer(tiny_model, b):
            only_b = tiny_model(toks)
        outer, inner = tv.steer(tiny_model, a), tv.steer(tiny_model, b)
        outer.__enter__()
        inner.__enter__()
        outer.__exit__(None, None, None)  # the outer block ends first: b alone remains
        torch.testing.assert_close(tiny_model(toks), only_b)
        inner.__exit__(None, None, None)
        assert_no_hooks_left(tiny_model)
        assert torch.equal(tiny_model(toks), plain)
        assert not torch.allclose(only_b, plain)


def test_steer_patches_nothing_on_the_instance(tiny_model):
    before = dict(tiny_model.__dict__)
    with tv.steer(tiny_model, make_vector(tiny_model)):
        assert "forward" not in tiny_model.__dict__ and "generate" not in tiny_model.__dict__
        tiny_model.generate(TEXTS[1], max_new_tokens=2, verbose=False)
    assert set(tiny_model.__dict__) == set(before)
