"""Nested steer() contexts, exited in and out of order, leave the model exactly as it was."""

import itertools

import pytest
import torch

import tvlens as tv
from tests.test_vector import make_vector

TEXT = "kevi -> vitilu , keso ->"
ORDERS = list(itertools.permutations(range(3)))


def clean(model) -> bool:
    no_hooks = all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())
    return no_hooks and "forward" not in vars(model) and "generate" not in vars(model)


def _vectors(model):
    return [make_vector(model, sites=((i % 2, -1),), seed=i) for i in range(3)]


def _steered(model, v, toks):
    with tv.steer(model, v):
        return model(toks)


@pytest.mark.parametrize("exit_order", ORDERS)
def test_nested_steer_exited_in_any_order_restores_the_model(tiny_model, exit_order):
    toks = tiny_model.to_tokens(TEXT)
    with torch.no_grad():
        base = tiny_model(toks)
        gen_base = tiny_model.generate(toks, max_new_tokens=3, do_sample=False, verbose=False)
        contexts = [tv.steer(tiny_model, v) for v in _vectors(tiny_model)]
        for c in contexts:
            c.__enter__()
        assert not torch.equal(tiny_model(toks), base)  # the test is not vacuous: all three steer
        for i in exit_order:
            contexts[i].__exit__(None, None, None)
        try:
            assert clean(tiny_model)
            assert torch.equal(tiny_model(toks), base)
            assert torch.equal(tiny_model.generate(toks, max_new_tokens=3, do_sample=False, verbose=False), gen_base)
        finally:  # never leave the session's model dirty for other tests
            tiny_model.reset_hooks(including_permanent=False)
            vars(tiny_model).pop("forward", None), vars(tiny_model).pop("generate", None)


@pytest.mark.parametrize("exit_order", [o for o in ORDERS if o[-1] != 0])
def test_the_context_left_open_keeps_steering_alone(tiny_model, exit_order):
    toks = tiny_model.to_tokens(TEXT)
    vectors = _vectors(tiny_model)
    with torch.no_grad():
        last = exit_order[-1]
        alone = _steered(tiny_model, vectors[last], toks)
        contexts = [tv.steer(tiny_model, v) for v in vectors]
        for c in contexts:
            c.__enter__()
        try:
            for i in exit_order[:-1]:
                contexts[i].__exit__(None, None, None)
            assert torch.equal(tiny_model(toks), alone)
        finally:
            contexts[last].__exit__(None, None, None)
            tiny_model.reset_hooks(including_permanent=False)
            vars(tiny_model).pop("forward", None), vars(tiny_model).pop("generate", None)
