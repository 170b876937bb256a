"""UNet++: deep supervision outputs, eval output choice, pruned inference."""

from __future__ import annotations

import pytest
import torch

from medseg.models import create_model

WIDTHS = (4, 8, 8, 16, 16)


def test_deep_supervision_returns_four_maps_in_training_and_one_in_eval():
    model = create_model("unetpp", 1, 2, widths=WIDTHS)
    x = torch.randn(2, 1, 40, 24)
    outputs = model.train()(x)
    assert isinstance(outputs, list) and len(outputs) == 4
    assert all(o.shape == (2, 2, 40, 24) for o in outputs)
    assert model.eval()(x).shape == (2, 2, 40, 24)


def _heads_with_frozen_batchnorm(model, x):
    """The deep-supervision list in training mode, with BatchNorm using running statistics (as in eval)."""
    for module in model.modules():
        module.training = module is model
    heads = model(x)
    model.eval()
    return heads


def test_eval_last_equals_last_training_head_and_mean_averages_heads():
    torch.manual_seed(0)
    model = create_model("unetpp", 1, 1, widths=WIDTHS, eval_output="mean").eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        mean_out = model(x)
        model.eval_output = "last"
        last_out = model(x)
        heads = _heads_with_frozen_batchnorm(model, x)
    torch.testing.assert_close(last_out, heads[-1])
    torch.testing.assert_close(mean_out, torch.stack(heads).mean(0))


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_pruned_output_equals_the_matching_head_of_the_full_network(depth):
    torch.manual_seed(0)
    model = create_model("unetpp", 1, 1, widths=WIDTHS).eval()
    x = torch.randn(1, 1, 48, 48)
    with torch.no_grad():
        full_heads = _heads_with_frozen_batchnorm(model, x)
        model.prune_depth = depth
        pruned = model(x)
    torch.testing.assert_close(pruned, full_heads[depth - 1])


def test_pruning_runs_fewer_nodes():
    model = create_model("unetpp", 1, 1, widths=WIDTHS, prune_depth=1).eval()
    called = []
    for name, node in model.nodes.items():
        node.register_forward_hook(lambda *_, n=name: called.append(n))
    model(torch.randn(1, 1, 32, 32))
    assert sorted(called) == ["0_0", "0_1", "1_0"]


def test_pruning_needs_deep_supervision():
    from medseg.errors import MedsegError

    with pytest.raises(MedsegError, match="deep_supervision"):
        create_model("unetpp", 1, 1, widths=WIDTHS, deep_supervision=False, prune_depth=2)
    without = create_model("unetpp", 1, 1, widths=WIDTHS, deep_supervision=False).train()
    assert without(torch.randn(2, 1, 32, 32)).shape == (2, 1, 32, 32)
