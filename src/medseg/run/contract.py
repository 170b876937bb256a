"""The run's typed contract: everything predict, evaluate, export, serve and compare need to know about a trained
model, written by training and read, strictly, by everything else.

It is a frozen, versioned dataclass stored as ``RUN_DIR/contract.json`` and inside every weights file's header.
A missing or unknown key is an error naming it; headers written before the contract existed (schema 0, an untyped
dict) are migrated; a newer schema is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict

import medseg
from medseg.config import Config, Normalization
from medseg.data.datasets import default_class_names
from medseg.data.fingerprint import Fingerprint
from medseg.errors import MedsegError
from medseg.files import atomic_write_json
from medseg.models import ModelSpec
from medseg.plan import Plan
from medseg.typed_file import TypedFile

SCHEMA_VERSION = 1
STRICT = ConfigDict(extra="forbid", strict=False)
WeightsName = Literal["final_model", "best_model"]


@dataclass(frozen=True)
class PostprocessSpec:
    """Per foreground class: keep the largest object (of every class, or of ``largest_component_classes``), drop
    objects under ``min_size`` pixels (voxels in a volume), fill holes."""

    __pydantic_config__ = STRICT
    largest_component: bool = False
    min_size: int = 0
    fill_holes: bool = False
    largest_component_classes: tuple[int, ...] = ()

    @property
    def active(self) -> bool:
        return self.largest_component or bool(self.largest_component_classes) or self.min_size > 0 or self.fill_holes

    def keeps_largest(self, cls: int) -> bool:
        return self.largest_component or cls in self.largest_component_classes

    def describe(self) -> str:
        classes = ", ".join(map(str, self.largest_component_classes))
        steps = [name for name, on in (("keep largest component", self.largest_component),
                                       (f"keep largest component of class {classes}",
                                        bool(self.largest_component_classes)),
                                       (f"remove objects < {self.min_size} px", self.min_size > 0),
                                       ("fill holes", self.fill_holes)) if on]
        return ", ".join(steps) or "none"


@dataclass(frozen=True)
class InferenceSpec:
    """How the model is applied to an image in reader scale [0, 1]."""

    __pydantic_config__ = STRICT
    n_classes: int
    channels: int
    normalize: Normalization | tuple[Normalization, ...]  # one scheme, or one per channel
    patch_size: int | None
    resize: int | None
    threshold: float
    tta: bool
    tta_vflip: bool
    overlap: float
    postprocess: PostprocessSpec
    class_names: tuple[str, ...]
    tta_hflip: bool = True
    slice_axis: int | None = None  # volumes: the voxel axis slices are taken along (None: each one's coarsest)
    spacing: tuple[float, float] | None = None  # volumes: the in-plane spacing (mm) slices are resampled to
    scale: float | None = None  # 2D images: the factor they are resampled by before the network
    intensity: tuple[tuple[float, float, float, float] | None, ...] | None = None  # per channel: CT's statistics


@dataclass(frozen=True)
class SplitIds:
    __pydantic_config__ = STRICT
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class DataRecord:
    """The data a run was trained on: where it was, what it was (hash of ids, names and sizes; fingerprint) and
    how it was split. A dataset is recognised by its ids and hash wherever it lives."""

    __pydantic_config__ = STRICT
    root: str
    format: str
    hash: str
    splits: SplitIds
    fingerprint: Fingerprint | None


@dataclass(frozen=True)
class RunContract:
    __pydantic_config__ = STRICT
    schema_version: int
    medseg_version: str
    model: ModelSpec
    inference: InferenceSpec
    data: DataRecord
    plan: Plan | None
    selected: WeightsName  # the weights predict and evaluate use by default

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_inference(self, **changes: Any) -> "RunContract":
        return replace(self, inference=replace(self.inference, **changes))

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "RunContract":
        return CONTRACT_FILE.load(path)


def contract_from_dict(mapping: dict[str, Any], where: str | Path) -> RunContract:
    """Validate a stored contract (a weights file's header; schema 0 migrated); errors name the key."""
    return CONTRACT_FILE.validate(mapping, where)


def _migrate_v0(meta: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """A checkpoint header from before the contract (medseg 0.1 untyped metadata) as a schema-1 mapping."""
    if "model" not in meta:
        raise MedsegError(where, "checkpoint has no model description")
    data, model = meta.get("data", {}), meta["model"]
    n_classes = int(data.get("n_classes", 2))
    recorded = meta.get("training_data", {})
    return {
        "schema_version": SCHEMA_VERSION,
        "medseg_version": meta.get("medseg_version", "0.1.0"),
        "model": {"name": model["name"], "in_channels": model["in_channels"], "out_channels": model["out_channels"],
                  "options": model.get("options", {})},
        "inference": {
            "n_classes": n_classes, "channels": int(data.get("channels", model["in_channels"])),
            "normalize": data.get("normalize", "zscore"), "patch_size": data.get("patch_size"),
            "resize": data.get("resize"), "threshold": float(meta.get("threshold", 0.5)), "tta": False,
            "tta_vflip": True,
            "overlap": 0.5, "postprocess": {},
            "class_names": meta.get("class_names") or default_class_names(n_classes),
        },
        "data": {"root": recorded.get("root", ""), "format": "auto", "hash": recorded.get("fingerprint", ""),
                 "splits": {name: recorded.get(f"{name}_ids", []) for name in ("train", "val", "test")},
                 "fingerprint": None},
        "plan": None,
        "selected": "best_model",
    }


CONTRACT_FILE = TypedFile(RunContract, "run contract", SCHEMA_VERSION, _migrate_v0)


def new_contract(model: ModelSpec, inference: InferenceSpec, data: DataRecord, plan: Plan | None,
                 selected: WeightsName) -> RunContract:
    return RunContract(SCHEMA_VERSION, medseg.__version__, model, inference, data, plan, selected)


def training_contract(config: Config, model: ModelSpec, channels: int, data: DataRecord,
                      plan: Plan | None) -> RunContract:
    """The contract a run starts with: inference as the config says, no post-processing yet, best weights."""
    c = config
    inference = InferenceSpec(
        n_classes=c.data.n_classes, channels=channels,
        normalize=c.data.normalize if isinstance(c.data.normalize, str) else tuple(c.data.normalize),
        intensity=None if c.data.intensity is None else tuple(
            None if v is None else tuple(v) for v in c.data.intensity), patch_size=c.data.patch_size,
        resize=c.data.resize, threshold=c.inference.threshold, tta=c.inference.tta, tta_vflip=c.inference.tta_vflip,
        tta_hflip=c.inference.tta_hflip,
        overlap=c.inference.overlap, postprocess=PostprocessSpec(),
        class_names=tuple(c.data.class_names or default_class_names(c.data.n_classes)), slice_axis=c.data.slice_axis,
        spacing=c.data.spacing, scale=c.data.scale)
    return new_contract(model, inference, data, plan, "best_model")
