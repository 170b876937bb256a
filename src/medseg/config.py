"""The one config schema: nested dataclasses, read from and written to YAML, overridden by ``key=value`` strings.

Unknown keys and wrong types are :class:`MedsegError`s naming the key (with the closest valid key suggested).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from medseg.data.transforms import AugmentConfig
from medseg.errors import MedsegError


@dataclass
class DataConfig:
    root: str = ""
    format: str = "auto"
    channels: int | None = None  # None: from the first training image
    n_classes: int = 2  # 2 = binary (one sigmoid output); K > 2 = K-way softmax
    class_names: list[str] | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    split_seed: int = 0  # seeds the carved val/test split (kept apart from train.seed so studies share one split)
    fold: int | None = None
    folds: int = 5
    patch_size: int | None = 256  # random crops of this size for training; tiles of this size for inference
    resize: int | None = None  # alternative to patches: resize every image to resize x resize
    foreground_p: float = 0.33
    normalize: str = "zscore"
    cache_gb: float = 4.0  # decode the dataset once into memory when it fits in this many GB
    workers: int = 0


@dataclass
class ModelConfig:
    name: str = "unet"
    widths: list[int] | None = None
    width_scale: float | None = None  # scale the model's default widths (rounded to multiples of 4), e.g. 0.25
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    name: str = "bce_dice"
    ce_weight: float = 0.5
    dice_weight: float = 1.0
    smooth: float = 1.0
    batch_dice: bool = True
    deep_supervision_weights: str | list[float] = "equal"


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.99
    schedule: str = "cosine"  # constant | cosine | poly | plateau
    poly_power: float = 0.9
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    grad_clip: float | None = None


@dataclass
class TrainConfig:
    epochs: int = 50
    iterations: int | None = None  # total optimizer steps; overrides epochs
    steps_per_epoch: int | None = None  # None: one pass over the training images
    batch_size: int = 4
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA
    sync_batchnorm: bool = False  # DDP on CUDA: synchronise BatchNorm statistics across ranks
    threshold: float = 0.5
    max_minutes: float | None = None  # stop (and keep the best checkpoint) after this much wall time
    log_every: int = 20


@dataclass
class StudyConfig:
    """Used by `medseg compare` when --models / --seeds are not given on the command line."""

    models: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    study: StudyConfig = field(default_factory=StudyConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_options(self) -> dict[str, Any]:
        from medseg.models import scaled_widths

        options = dict(self.model.options)
        if self.model.widths is not None:
            options["widths"] = list(self.model.widths)
        elif self.model.width_scale is not None:
            options["widths"] = scaled_widths(self.model.name, self.model.width_scale)
        return options


def _all_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += _all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _unknown(key: str, valid: Iterable[str]) -> MedsegError:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return MedsegError("config", f"unknown key {key!r}{hint}")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation (ints widen to floats); raise a MedsegError naming the key."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _coerce(key, value, option)
            except MedsegError as exc:
                errors.append(exc)
        raise errors[-1]
    if annotation is type(None):
        if value is None:
            return None
    elif annotation is Any:
        return value
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (inner,) = typing.get_args(annotation)
            return [_coerce(key, v, inner) for v in value]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    name = getattr(annotation, "__name__", str(annotation))
    raise MedsegError("config", f"{key}: expected {name}, got {value!r}")


def _set(config: Config, key: str, value: Any) -> None:
    parts = key.split(".")
    target: Any = config
    for depth, part in enumerate(parts):
        if isinstance(target, dict):
            node = target
            for rest in parts[depth:-1]:
                node = node.setdefault(rest, {})
            node[parts[-1]] = value
            return
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
            raise _unknown(key, _all_keys(config))
        if depth == len(parts) - 1:
            hints = typing.get_type_hints(type(target))
            if dataclasses.is_dataclass(getattr(target, part)):
                if not isinstance(value, dict):
                    raise MedsegError("config", f"{key}: expected a mapping, got {value!r}")
                for sub_key, sub_value in value.items():
                    _set(config, f"{key}.{sub_key}", sub_value)
                return
            setattr(target, part, _coerce(key, value, hints[part]))
            return
        target = getattr(target, part)


def apply_mapping(config: Config, mapping: dict[str, Any], prefix: str = "") -> Config:
    """Apply a nested mapping (e.g. a parsed YAML file) onto ``config``."""
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and full != "model.options" and not full.startswith("model.options."):
            apply_mapping(config, value, f"{full}.")
        else:
            _set(config, full, value)
    return config


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    """Apply ``key=value`` strings; values are parsed as YAML (``[32,64]``, ``true``, ``1e-3``, ``null``)."""
    for override in overrides:
        if "=" not in override:
            raise MedsegError("--set", f"expected key=value, got {override!r}")
        key, raw = override.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set(config, key.strip(), value)
    return config


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML file (if any), then the overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        try:
            mapping = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise MedsegError(path, f"cannot read config ({exc})") from None
        if not isinstance(mapping, dict):
            raise MedsegError(path, "config must be a YAML mapping")
        try:
            apply_mapping(config, mapping)
        except MedsegError as exc:
            raise MedsegError(path, exc.reason) from None
    return apply_overrides(config, overrides)


def config_from_dict(mapping: dict[str, Any]) -> Config:
    return apply_mapping(Config(), mapping)


def save_config(config: Config, path: str | Path) -> None:
    from medseg.engine.checkpoint import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
