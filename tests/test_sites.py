import pytest
import torch

import tvlens as tv
from tvlens.errors import PromptError
from tvlens.sites import Site, check_sites, resolve_columns


def test_grid_is_one_site_per_layer_position_pair():
    sites = tv.site_grid(layers=[0, 4, 8], positions=range(-5, 0))
    assert len(sites) == 15 and sites[0] == Site(0, -5) and sites[-1] == Site(8, -1)
    assert Site(3, -1).hook_name == "blocks.3.hook_resid_pre"
    with pytest.raises(PromptError, match="duplicate"):
        tv.site_grid([1, 1], [-1])


@pytest.mark.parametrize("text,site", [("L3@-1", Site(3, -1)), ("2:4", Site(2, 4)), ("1", Site(1, -1))])
def test_parse(text, site):
    assert Site.parse(text) == site


def test_parse_error_names_the_format():
    with pytest.raises(PromptError, match="L<layer>@<position>"):
        Site.parse("x@y")


def test_resolve_left_and_right_padding():
    # two prompts of lengths 5 and 3 in a width-5 batch
    left_first, left_last = torch.tensor([0, 2]), torch.tensor([4, 4])
    right_first, right_last = torch.tensor([0, 0]), torch.tensor([4, 2])
    assert resolve_columns(-1, left_last, left_first).tolist() == [4, 4]
    assert resolve_columns(-1, right_last, right_first).tolist() == [4, 2]
    assert resolve_columns(1, left_last, left_first).tolist() == [1, 3]
    assert resolve_columns(-3, right_last, right_first).tolist() == [2, 0]
    with pytest.raises(PromptError, match="outside prompt 1"):
        resolve_columns(-4, right_last, right_first)
    with pytest.raises(PromptError):
        resolve_columns(3, left_last, left_first)


def test_check_sites_names_the_layers():
    with pytest.raises(PromptError, match="layers 0..3"):
        check_sites([Site(4, -1)], 4)


def test_out_of_range_policies():
    first, last = torch.tensor([0, 2]), torch.tensor([4, 4])  # lengths 5 and 3
    assert resolve_columns(-4, last, first, "skip").tolist() == [1, -1]
    assert resolve_columns(-4, last, first, "clip").tolist() == [1, 2]
    assert resolve_columns(4, last, first, "clip").tolist() == [4, 4]
    assert resolve_columns(4, last, first, "skip").tolist() == [4, -1]
    # under the test suite's runtime type checks the Literal hint catches it first
    with pytest.raises((PromptError, TypeError)):
        resolve_columns(-1, last, first, "wrap")
