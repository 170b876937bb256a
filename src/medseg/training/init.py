"""Starting a run from a trained one (`medseg train --init RUN`): what it keeps of RUN (the network and the input
geometry its weights were trained with, and its split), what it refuses (other channels, 2D against volumes), and
its weights loaded into the new network, the last layer new where the class count differs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from medseg.config import Config
from medseg.data.datasets import Item, load_sample
from medseg.errors import MedsegError
from medseg.log import get_logger
from medseg.plan import NETWORK_KEYS, PlanChoice
from medseg.run.contract import RunContract
from medseg.run.folder import RunFolder, resolve_weights
from medseg.run.weights import Checkpoint, load_checkpoint

@dataclass(frozen=True)
class InitSource:
    """The weights file a run starts from (``given``: as the user named it) and the contract it holds."""

    given: str
    weights: Path
    contract: RunContract

    @classmethod
    def load(cls, given: str | Path) -> "InitSource":
        path = Path(given)
        if not path.exists():
            raise MedsegError("--init", f"{given}: no such run folder or weights file")
        if path.is_dir() and RunFolder(path).folds():
            raise MedsegError("--init", f"{given} is a cross-validation run: start from one fold ({path}/fold_0)")
        weights = resolve_weights(path)
        return cls(str(given), weights, load_checkpoint(weights).contract)

    @property
    def volumes(self) -> bool:
        """RUN was trained on volumes' slices."""
        return self.contract.inference.slice_axis is not None or self.contract.inference.spacing is not None

    def choices(self, n_classes: int | None = None) -> tuple[PlanChoice, ...]:
        """The config values the run keeps, each with its reason: RUN's network (its last layer new for another
        class count than ``n_classes``), its input geometry, and no new test split where RUN had none."""
        spec, model = self.contract.inference, self.contract.model
        head = (f"; its last layer is new ({n_classes} classes, RUN had {spec.n_classes})"
                if n_classes not in (None, spec.n_classes) else "")
        weights = f"{self.given} (--init): the network its weights fit{head}"
        geometry = f"{self.given} (--init): the input its weights were trained on"
        values: dict[str, Any] = {
            "model.name": model.name, "model.options": dict(model.options), "data.channels": spec.channels,
            "data.normalize": spec.normalize if isinstance(spec.normalize, str) else list(spec.normalize),
            "data.intensity": None if spec.intensity is None else [
                None if v is None else list(v) for v in spec.intensity],
            "data.scale": spec.scale, "data.resize": spec.resize,
            "data.patch_size": spec.patch_size, "data.slice_axis": spec.slice_axis,
            "data.spacing": list(spec.spacing) if spec.spacing is not None else None}
        kept = tuple(PlanChoice(key, value, weights if key.startswith("model.") else geometry)
                     for key, value in values.items())
        if self.has_test:
            return kept
        return kept + (PlanChoice("data.test_fraction", 0.0, f"{self.given} (--init) had no test split: one now "
                                                             "would hold images its weights learned from"),)

    def check(self, config: Config, fixed: frozenset[str], items: Sequence[Item]) -> None:
        """Refuse, in one line, what the weights cannot start: a network the user chose, volumes against 2D images
        (either way round), or images of another channel count (the first labelled image's)."""
        chosen = sorted(fixed & set(NETWORK_KEYS))
        model = self.contract.model
        same = config.model.name == model.name and _jsonable(config.model.zoo_options()) == _jsonable(model.options)
        if chosen and not same:
            raise MedsegError("--init", f"{self.given} fixes the network ({model.name}); {chosen[0]} cannot change "
                                        "it")
        volumes = any(item.slice is not None for item in items)
        if volumes != self.volumes:
            kinds = ("volumes (NIfTI or DICOM slices)", "2D images")
            raise MedsegError("--init", f"{self.given} was trained on {kinds[not self.volumes]}, {config.data.root} "
                                        f"holds {kinds[not volumes]}")
        first = next((item for item in items if item.labelled), None)
        channels = load_sample(first, None, config.data.n_classes).image.shape[2] if first else None
        if channels is not None and channels != self.contract.inference.channels:
            raise MedsegError("--init", f"{self.given} takes {self.contract.inference.channels}-channel images, "
                                        f"{config.data.root} has {channels}-channel images")

    def with_splits(self, items: Sequence[Item]) -> list[Item]:
        """``items`` with the split RUN recorded for each id it knew (its test images stay test, the images its
        weights learned from never become test); new ids are left to the usual split."""
        recorded = self.contract.data.splits
        split_of = {i: name for name in ("train", "val", "test") for i in getattr(recorded, name)}
        return [replace(item, split=split_of.get(item.id, item.split)) for item in items]

    @property
    def has_test(self) -> bool:
        return bool(self.contract.data.splits.test)


def _jsonable(options: dict[str, Any]) -> str:
    """Model options as JSON (tuples and lists alike), to compare two networks."""
    import json

    return json.dumps(options, sort_keys=True)


def start_from(model: torch.nn.Module, source: InitSource) -> None:
    """Load ``source``'s weights into ``model`` (the network its contract describes, with the new class count):
    every tensor whose shape fits, and only the output layers (whose shapes differ in their class dimension) left
    as initialised; anything else that does not fit is a one-line error."""
    checkpoint = load_checkpoint(source.weights)
    own = model.state_dict()
    new_classes, old_classes = model.spec.out_channels, source.contract.model.out_channels
    fitting, fresh = _fitting(checkpoint, own, new_classes, old_classes, source)
    model.load_state_dict({**own, **fitting})
    if fresh:
        get_logger().info("started from %s; new output layer(s) for %d classes: %s", source.given, new_classes,
                          ", ".join(fresh))
    else:
        get_logger().info("started from %s (%d tensors)", source.given, len(fitting))


def _fitting(checkpoint: Checkpoint, own: dict[str, torch.Tensor], new_classes: int, old_classes: int,
             source: InitSource) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The source tensors that fit ``own``, and the names of the output-layer tensors that do not."""
    fitting, fresh = {}, []
    for name, tensor in own.items():
        old = checkpoint.weights.get(name)
        if old is not None and old.shape == tensor.shape:
            fitting[name] = old
        elif old is not None and _is_output(old.shape, tensor.shape, old_classes, new_classes):
            fresh.append(name)
        else:
            found = "missing" if old is None else f"shaped {tuple(old.shape)}, not {tuple(tensor.shape)}"
            raise MedsegError(source.weights, f"weights do not fit the network: {name} is {found}")
    return fitting, fresh


def _is_output(old: torch.Size, new: torch.Size, old_classes: int, new_classes: int) -> bool:
    """A tensor of an output layer: one row per class, the same otherwise."""
    return (len(old) == len(new) and old[1:] == new[1:] and (old[0], new[0]) == (old_classes, new_classes))
