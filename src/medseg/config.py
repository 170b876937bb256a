"""The one config schema: pydantic models, validated when loaded (enumerated options are ``Literal`` types), read
from and written to YAML, overridden by ``key=value`` strings.

Every problem is a one-line :class:`MedsegError` naming the key, with the closest valid key or value suggested.
This module imports nothing from ``data/``, ``models/`` or anything above them: they import it.
"""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medseg.errors import MedsegError, did_you_mean
from medseg.files import atomic_write_text

DatasetFormat = Literal["auto", "folder", "msd", "nnunet", "tiff-stack", "drive", "isic", "busi"]
Normalization = Literal["zscore", "nonzero", "ct", "unit"]  # see medseg.data.intensity
LossName = Literal["auto", "bce", "dice", "bce_dice", "ce", "ce_dice"]
OptimizerName = Literal["adam", "adamw", "sgd"]
ScheduleName = Literal["constant", "cosine", "poly", "plateau"]
Selection = Literal["auto", "final", "best"]
PostprocessMode = Literal["auto", "none"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    root: str = ""
    format: DatasetFormat = "auto"
    channels: int | None = None  # None: from the first training image
    n_classes: int | None = Field(None, ge=2)  # 2 = binary (sigmoid); K > 2 = K-way softmax; None: from the data
    class_names: list[str] | None = None  # None: from dataset.json, else class_<k>
    slice_axis: int | None = Field(None, ge=0, le=2)  # volumes: the voxel axis to slice along; None: the coarsest
    spacing: tuple[float, float] | None = None  # volumes: slices are resampled to this in-plane spacing (mm)
    scale: float | None = Field(None, gt=0, le=1)  # 2D images are resampled by this factor (predictions back)
    val_fraction: float = Field(0.2, ge=0, lt=1)
    test_fraction: float = Field(0.0, ge=0, lt=1)
    split_seed: int = 0  # seeds the carved val/test split (kept apart from train.seed so studies share one split)
    fold: int | Literal["all"] | None = None  # validate on fold i of `folds`; "all": train on every labelled image
    folds: int = Field(5, ge=2)
    patch_size: int | None = Field(256, ge=8)  # random crops for training; tiles of this size for inference
    resize: int | None = Field(None, ge=8)  # whole images resized to resize x resize (then patch_size is unused)
    foreground_p: float = Field(0.33, ge=0, le=1)
    normalize: Normalization | list[Normalization] = "zscore"  # one scheme, or one per channel (planned for volumes)
    intensity: list[list[float] | None] | None = None  # per channel, the CT scheme's [low, high, mean, std]
    cache_gb: float = Field(4.0, ge=0)  # keep decoded samples in memory up to this many GB
    workers: int = Field(0, ge=0)


class ModelConfig(Section):
    name: str = "unet"
    widths: list[int] | None = None
    width_scale: float | None = Field(None, gt=0)  # scale the model's default widths (multiples of 4), e.g. 0.25
    options: dict[str, Any] = Field(default_factory=dict)

    def zoo_options(self) -> dict[str, Any]:
        """The zoo options of this model: ``widths``, else widths in ``options`` (a study's per-model choice),
        else the default widths scaled by ``width_scale``."""
        from medseg.models import scaled_widths

        options = dict(self.options)
        if self.widths is not None:
            options["widths"] = list(self.widths)
        elif self.width_scale is not None and "widths" not in options:
            options["widths"] = scaled_widths(self.name, self.width_scale)
        return options


class LossConfig(Section):
    name: LossName = "auto"  # cross-entropy + soft Dice: bce_dice for binary tasks, ce_dice for several classes
    ce_weight: float = 0.5
    dice_weight: float = 1.0
    smooth: float = 1.0
    batch_dice: bool = True
    deep_supervision_weights: Literal["equal", "halving"] | list[float] = "equal"


class OptimConfig(Section):
    name: OptimizerName = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.99, ge=0, lt=1)
    schedule: ScheduleName = "cosine"
    warmup_steps: int = Field(10, ge=0)  # linear warm-up before the schedule
    poly_power: float = 0.9
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    grad_clip: float | None = None


class TrainConfig(Section):
    epochs: int = Field(50, ge=1)
    iterations: int | None = Field(None, ge=1)  # total optimizer steps; overrides epochs
    budget_minutes: float | None = Field(None, gt=0)  # train to this deadline; the schedule follows elapsed time
    steps_per_epoch: int | None = Field(None, ge=1)  # None: one pass over the training images, at least 250
    batch_size: int = Field(4, ge=1)
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA (float16)
    cpu_bf16: bool = False  # CPU: the forward pass in bfloat16 autocast (planned where a probe measured it faster)
    sync_batchnorm: bool = False  # DDP on CUDA: synchronise BatchNorm statistics across ranks
    val_time_share: float | None = Field(0.1, gt=0, le=1)  # validation may cost at most this share of the time
    val_images: int | None = Field(None, ge=1)  # validate on a fixed subset of this many images
    val_smoothing: float = Field(0.5, ge=0, lt=1)  # best_model follows an EMA of validation Dice (weight of the past)
    select: Selection = "auto"  # weights predict/evaluate use: final, best (EMA of val Dice), auto (see README)
    log_every: int = Field(20, ge=1)
    tensorboard: bool | None = None  # log to RUN_DIR/tensorboard; None: when the tensorboard package is installed
    init: str | None = None  # start from this trained run's weights (its folder or a weights file), keeping its
    # network, input geometry and split


class InferenceConfig(Section):
    threshold: float = Field(0.5, gt=0, lt=1)
    tta: bool = False  # average over flips
    tta_vflip: bool = True  # with tta: also vertical flips (off for images with an up/down orientation)
    tta_hflip: bool = True  # with tta: horizontal flips (off where classes sit in a fixed left/right order)
    overlap: float = Field(0.5, ge=0, lt=1)
    postprocess: PostprocessMode = "auto"  # auto: chosen on validation predictions at the end of training


class AugmentConfig(Section):
    """Augmentation switches and strengths; a probability of 0 disables a transform."""

    flip: bool = True  # horizontal flips
    vflip: bool = True  # vertical flips (off for images with an up/down orientation, e.g. ultrasound)
    rotate90: bool = True
    rotate_degrees: float = 15.0
    scale: float = 0.1
    shift: float = 0.05
    affine_p: float = Field(0.3, ge=0, le=1)
    elastic_p: float = Field(0.3, ge=0, le=1)
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    brightness: float = 0.1
    contrast: float = 0.1
    intensity_p: float = Field(0.3, ge=0, le=1)
    gamma: float = 0.2
    gamma_p: float = Field(0.3, ge=0, le=1)
    blur_p: float = Field(0.1, ge=0, le=1)
    noise_p: float = Field(0.1, ge=0, le=1)
    noise_std: float = 0.03


class StudyConfig(Section):
    """Used by `medseg compare` when --models / --seeds are not given on the command line."""

    models: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0])


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    study: StudyConfig = Field(default_factory=StudyConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        data = self.data
        if data.class_names is not None and data.n_classes is not None and len(data.class_names) != data.n_classes:
            raise ValueError(f"data.class_names: {len(data.class_names)} names for data.n_classes={data.n_classes}")
        if data.val_fraction + data.test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must leave images for training")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def leaf_keys(mapping: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every leaf key of a nested config mapping, dotted (``optim.lr``); ``model.options`` is one leaf (its keys are
    the model's own, not config sections)."""
    keys = []
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and dotted != "model.options":
            keys += leaf_keys(value, f"{dotted}.")
        else:
            keys.append(dotted)
    return keys


def user_keys(config: Config) -> frozenset[str]:
    """The dotted keys the user set (in a config file, with flags or in code), as opposed to defaults."""
    return frozenset(leaf_keys(config.model_dump(exclude_unset=True)))


def config_keys() -> list[str]:
    """Every leaf key of the schema, dotted (``optim.lr``)."""
    return leaf_keys(Config().to_dict())


def _field_path(loc: tuple[Any, ...]) -> tuple[str, Any]:
    """The dotted key of a pydantic error location and the field's annotation (union-member tags dropped)."""
    model: Any = Config
    parts: list[str] = []
    annotation: Any = None
    for part in loc:
        if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            parts.append(str(part))
            annotation = model.model_fields[part].annotation
            model = annotation
        else:
            break
    return ".".join(parts), annotation


def _choices(annotation: Any) -> list[str]:
    """The literal values an annotation admits (through unions)."""
    if typing.get_origin(annotation) is Literal:
        return [str(v) for v in typing.get_args(annotation)]
    return [c for arg in typing.get_args(annotation) for c in _choices(arg)]


_EXPECTED = {"int": "int", "float": "float", "bool": "bool", "string": "str", "list": "list", "dict": "mapping"}


def _message(error: Mapping[str, Any]) -> str:
    """One line for the first error pydantic reports."""
    key, annotation = _field_path(tuple(error["loc"]))
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        full = ".".join(str(p) for p in error["loc"])
        return f"unknown key {full!r}{did_you_mean(full, config_keys())}"
    choices = list(dict.fromkeys(_choices(annotation)))
    if choices and isinstance(value, str):
        return f"{key}: {value!r} is not one of {', '.join(choices)}{did_you_mean(value, choices, cutoff=0.4)}"
    if kind.startswith(("greater", "less")):
        return f"{key}: {error['msg'].lower()}, got {value!r}"
    for prefix, name in _EXPECTED.items():
        if kind.startswith(prefix):
            return f"{key}: expected {name}, got {value!r}"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    return f"{key}: {error['msg']} (got {value!r})"


def validate_config(mapping: Mapping[str, Any]) -> Config:
    """A :class:`Config` from a nested mapping; the first problem is a MedsegError naming the key."""
    try:
        return Config.model_validate(dict(mapping))
    except ValidationError as exc:
        raise MedsegError("config", _message(exc.errors()[0])) from None


def set_key(mapping: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested mapping."""
    *parents, leaf = key.split(".")
    node = mapping
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, section by section (``model.options`` merged key by key)."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``key=value`` strings as a nested mapping; values are parsed as YAML (``[32,64]``, ``true``, ``1e-3``)."""
    mapping: dict[str, Any] = {}
    for override in overrides:
        if "=" not in override:
            raise MedsegError("--set", f"expected key=value, got {override!r}")
        key, raw = override.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        set_key(mapping, key.strip(), value)
    return mapping


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping."""
    path = Path(path)
    try:
        mapping = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MedsegError(path, f"cannot read YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(mapping, dict):
        raise MedsegError(path, "config must be a YAML mapping")
    return mapping


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                base: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then ``base`` (e.g. a plan's choices), then the YAML file (if any), then the overrides."""
    mapping = dict(base or {})
    if path is not None:
        file_mapping = read_yaml_mapping(path)
        try:
            validate_config(file_mapping)
        except MedsegError as exc:
            raise MedsegError(path, exc.reason) from None
        mapping = merge(mapping, file_mapping)
    return validate_config(merge(mapping, parse_overrides(overrides)))


def save_config(config: Config, path: str | Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
