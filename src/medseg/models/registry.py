"""The model zoo registry: ``create_model(name, in_channels, out_channels, **options)`` and ``list_models()``.

A model is rebuilt from its :class:`ModelSpec` alone; :func:`create_model` stores it on the module as
``model.spec`` so run contracts can record it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import ConfigDict
from torch import nn

from medseg.errors import MedsegError, did_you_mean
from medseg.models.resunet import ResUNet
from medseg.models.segnet import SegNet
from medseg.models.unet import UNet
from medseg.models.unetpp import UNetPlusPlus


@dataclass(frozen=True)
class ModelSpec:
    """Rebuilds a network: ``create_model(name, in_channels, out_channels, **options)``."""

    __pydantic_config__ = ConfigDict(extra="forbid")
    name: str
    in_channels: int
    out_channels: int
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        return create_model(self.name, self.in_channels, self.out_channels, **self.options)


@dataclass(frozen=True)
class ModelEntry:
    """A registered name: the class that builds it, the preset options, and where it comes from."""

    name: str
    builder: Callable[..., nn.Module]
    summary: str
    source: str
    presets: dict[str, Any] = field(default_factory=dict)

    def option_names(self) -> list[str]:
        params = inspect.signature(self.builder).parameters
        return [p for p in params if p not in ("self", "in_channels", "out_channels")]


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, builder: Callable[..., nn.Module], summary: str, source: str, **presets: Any) -> None:
    """Register ``name`` as ``builder`` with preset options (overridable by the caller)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelEntry(name, builder, summary, source, dict(presets))


def list_models() -> list[str]:
    """Registered model names, in registration order."""
    return list(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; a :class:`MedsegError` suggesting the closest name if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = did_you_mean(name, _REGISTRY, cutoff=0.6) or f"; known: {', '.join(_REGISTRY)}"
        raise MedsegError("model", f"unknown model {name!r}{hint}") from None


def create_model(name: str, in_channels: int = 1, out_channels: int = 1, **options: Any) -> nn.Module:
    """Build a zoo model. Options override the entry's presets; an unknown option is a :class:`MedsegError`.

    Returns a module mapping ``N x in_channels x H x W`` to logits ``N x out_channels x H x W`` for any H, W.
    """
    entry = get_entry(name)
    valid = entry.option_names()
    for key in options:
        if key not in valid:
            raise MedsegError("model", f"{name} has no option {key!r}{did_you_mean(key, valid, cutoff=0.6)}; "
                                       f"options: {', '.join(valid)}")
    kwargs = {**entry.presets, **options}
    if "widths" in kwargs:
        kwargs["widths"] = tuple(int(w) for w in kwargs["widths"])
    try:
        model = entry.builder(int(in_channels), int(out_channels), **kwargs)
    except (ValueError, TypeError) as exc:
        raise MedsegError("model", f"{name}: {exc}") from None
    model.spec = ModelSpec(name, int(in_channels), int(out_channels),
                           {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()})
    return model


def default_widths(name: str) -> list[int]:
    """The widths ``name`` is built with when none are given."""
    entry = get_entry(name)
    if "widths" in entry.presets:
        return list(entry.presets["widths"])
    return list(inspect.signature(entry.builder).parameters["widths"].default)


def scaled_widths(name: str, scale: float) -> list[int]:
    """Default widths times ``scale``, rounded to multiples of 4 (at least 4), for reduced-size studies."""
    return [max(4, 4 * round(w * scale / 4)) for w in default_widths(name)]


_U_SEGNET_STUDY = "U-SegNet study (Kumar et al. 2018 U-SegNet; comparison with U-Net, ResUNet, SegNet)"
_ENHANCED = "Enhanced / lightweight U-Net study (ISIC 2018, BUSI)"

register_model("unet", UNet, "U-Net, 4 poolings, transposed-conv up-sampling, concat skips",
               "Ronneberger et al. 2015", conv_bias=True)
register_model("unet_dw", UNet, "U-Net of depthwise-separable units", _ENHANCED, unit="dw", conv_bias=False)
register_model("unet_se", UNet, "U-Net + squeeze-and-excitation (r=16) after every block", _ENHANCED,
               se_reduction=16, conv_bias=False)
register_model("unet_se_dw", UNet, "U-Net, depthwise-separable units + SE", _ENHANCED,
               unit="dw", se_reduction=16, conv_bias=False)
register_model("unet_spatial_attention", UNet, "SE + DW U-Net with 7x7 spatial attention on encoder skips",
               _ENHANCED, unit="dw", se_reduction=16, spatial_attention=True, conv_bias=False)
register_model("unet_ultralight", UNet, "widths 16..256, DW units with 4-group pointwise convs", _ENHANCED,
               widths=(16, 32, 64, 128, 256), unit="dw", groups=4, conv_bias=False)
register_model("unetpp", UNetPlusPlus, "UNet++: nested dense skips, deep supervision, pruning",
               "Zhou et al. 2018")
register_model("resunet", ResUNet, "Residual U-Net, pre-activation residual units", _U_SEGNET_STUDY)
register_model("segnet", SegNet, "SegNet, 5-level VGG encoder, max-unpooling, no skips", _U_SEGNET_STUDY)
register_model("usegnet", SegNet, "U-SegNet, 3 levels, unpooling + concat skips on the last `skips` blocks",
               _U_SEGNET_STUDY, widths=(64, 128, 256), convs_per_level=(2, 2, 3), skips=3)
register_model("res_usegnet", SegNet, "U-SegNet with residual units in the encoder, 3 skips", _U_SEGNET_STUDY,
               widths=(64, 128, 256), convs_per_level=(2, 2, 3), skips=3, encoder_unit="residual")
