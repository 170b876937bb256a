"""Every zoo model: exact parameter counts of the source projects, any-size forward/backward, multi-class."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import MedsegError
from medseg.models import ModelSpec, count_parameters, create_model, list_models

# (name, options, parameters) with in_channels=3, out_channels=1, from the source projects' tables and code.
SOURCE_COUNTS = [
    ("unet", {"conv_bias": True}, 31_043_521),
    ("resunet", {"conv_bias": True}, 13_043_009),
    ("segnet", {"conv_bias": True}, 29_443_585),
    ("usegnet", {"conv_bias": True, "skips": 3}, 4_247_809),
    ("usegnet", {"conv_bias": True, "skips": 2}, 3_657_985),
    ("usegnet", {"conv_bias": True, "skips": 1}, 3_510_529),
    ("res_usegnet", {"conv_bias": True}, 8_126_663),
    ("unet", {"conv_bias": False}, 31_037_633),
    ("unet_dw", {"conv_bias": False}, 5_988_252),
    ("unet_se", {"conv_bias": False}, 31_255_745),
    ("unet_se_dw", {"conv_bias": False}, 6_206_364),
    ("unet_se_dw", {"conv_bias": False, "se_reduction": 32}, 6_097_308),
    ("unet_spatial_attention", {"conv_bias": False}, 6_206_756),
    ("unet_ultralight", {"conv_bias": False}, 239_676),
]

TINY = {
    "unet": {"widths": (4, 8, 8, 16, 16)},
    "unet_dw": {"widths": (4, 8, 8, 16, 16)},
    "unet_se": {"widths": (4, 8, 8, 16, 16), "se_reduction": 2},
    "unet_se_dw": {"widths": (4, 8, 8, 16, 16), "se_reduction": 2},
    "unet_spatial_attention": {"widths": (4, 8, 8, 16, 16), "se_reduction": 2},
    "unet_ultralight": {"widths": (4, 8, 8, 16, 16)},
    "unetpp": {"widths": (4, 8, 8, 16, 16)},
    "resunet": {"widths": (4, 8, 8, 16)},
    "segnet": {"widths": (4, 8, 8, 8, 8)},
    "usegnet": {"widths": (4, 8, 8)},
    "res_usegnet": {"widths": (4, 8, 8)},
}


@pytest.mark.parametrize(("name", "options", "expected"), SOURCE_COUNTS, ids=lambda v: str(v))
def test_parameter_count_matches_source(name, options, expected):
    assert count_parameters(create_model(name, 3, 1, **options)) == expected


def test_every_registered_model_has_a_tiny_config():
    assert set(list_models()) == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("out_channels", [1, 3])
def test_forward_backward_any_size(name, out_channels):
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, out_channels=out_channels, **TINY[name])
    model.eval()
    x = torch.randn(2, 3, 37, 53, requires_grad=True)
    out = model(x)
    assert out.shape == (2, out_channels, 37, 53)
    model.train()
    out = model(x)
    outputs = out if isinstance(out, list) else [out]
    loss = sum(o.square().mean() for o in outputs)
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["unet", "segnet", "unetpp"])
def test_tiny_images(name):
    model = create_model(name, 1, 1, **TINY[name]).eval()
    assert model(torch.randn(1, 1, 1, 1)).shape == (1, 1, 1, 1)


def test_output_does_not_depend_on_batch_neighbours():
    model = create_model("unet", 1, 2, **TINY["unet"]).eval()
    x = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(model(x)[1:2], model(x[1:2]), rtol=1e-4, atol=1e-5)


def test_conv_bias_false_removes_biases_of_3x3_convs():
    model = create_model("unet", 1, 1, widths=(4, 8), conv_bias=False)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs and all(c.bias is None for c in convs)


def test_spec_rebuilds_identical_architecture():
    model = create_model("usegnet", 2, 3, widths=[4, 8, 8], skips=1)
    rebuilt = model.spec.build()
    assert model.spec == ModelSpec("usegnet", 2, 3, {"widths": [4, 8, 8], "skips": 1})
    assert [p.shape for p in model.parameters()] == [p.shape for p in rebuilt.parameters()]


def test_unknown_model_and_option_are_clear_errors():
    with pytest.raises(MedsegError, match="did you mean 'unetpp'"):
        create_model("unetp")
    with pytest.raises(MedsegError, match="no option 'width'.*did you mean 'widths'"):
        create_model("unet", width=(4, 8))
    with pytest.raises(MedsegError, match="skips"):
        create_model("usegnet", skips=7)


@pytest.mark.parametrize("name", sorted(TINY))
def test_instance_norm_option_replaces_every_batchnorm(name):
    model = create_model(name, 3, 1, norm="instance", **TINY[name])
    kinds = {type(m).__name__ for m in model.modules()}
    assert "BatchNorm2d" not in kinds and "InstanceNorm2d" in kinds
    assert model.eval()(torch.randn(1, 3, 20, 28)).shape == (1, 1, 20, 28)
