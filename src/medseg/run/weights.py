"""Weights files without pickle: tensors in safetensors, the run contract and everything else as JSON in the
safetensors header.

A weights file is one ``NAME.safetensors``, written atomically, so a kill at any moment leaves the previous file
intact. Its header holds the run contract (so a file alone is enough to predict), a :class:`WeightsInfo`, and for
``checkpoint.safetensors`` the training state, whose tensors go into the same file under ``state/`` keys and whose
structure into the JSON, so nothing is ever unpickled. A ``NAME.json`` sidecar repeats the header for people.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from medseg.run.contract import RunContract, contract_from_dict
from medseg.errors import MedsegError
from medseg.files import atomic_write_bytes, atomic_write_text
from medseg.log import get_logger

_META_KEY = "medseg"
_TENSOR_TAG = "__tensor__"


@dataclass(frozen=True)
class WeightsInfo:
    """When a weights file was written: after ``epoch`` epochs and ``step`` steps, ``seconds`` into training."""

    epoch: int
    step: int
    seconds: float
    val_dice: float


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]
    contract: RunContract
    info: WeightsInfo
    train_state: Any  # the flattened training state of checkpoint.safetensors, else None


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """JSON skeleton of a nested state (dicts, lists, numbers, strings); tensors move into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR_TAG: key}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten_state(k, tensors, prefix), flatten_state(v, tensors, prefix)]
                             for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [flatten_state(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR_TAG in obj:
            return tensors[obj[_TENSOR_TAG]]
        return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


def save_checkpoint(path: Path, weights: dict[str, torch.Tensor], contract: RunContract, info: WeightsInfo,
                    train_state: Any = None) -> None:
    """Write ``path`` (``.safetensors``) with weights, contract, info and optional training state, atomically;
    then the ``.json`` sidecar."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in weights.items()}
    header: dict[str, Any] = {"contract": contract.to_dict(), "weights": asdict(info)}
    if train_state is not None:
        header["train_state"] = flatten_state(train_state, tensors, "state/")
    atomic_write_bytes(path, save_safetensors_bytes(tensors, metadata={_META_KEY: json.dumps(header)}))
    sidecar = {k: v for k, v in header.items() if k != "train_state"}
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a weights file. Corrupt or foreign files are MedsegErrors; an old header is migrated."""
    path = Path(path)
    if not path.is_file():
        raise MedsegError(path, "checkpoint not found")
    try:
        data = path.read_bytes()
        tensors = load_safetensors_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"][_META_KEY])
        if not isinstance(header, dict):
            raise TypeError("the header is not a mapping")
        info = WeightsInfo(**header["weights"]) if "contract" in header else None
    except (SafetensorError, ValueError, KeyError, TypeError, OSError) as exc:
        raise MedsegError(path, f"not a readable medseg checkpoint ({type(exc).__name__}: {exc})") from None
    weights = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    if info is not None:
        contract = contract_from_dict(header["contract"], path)
    else:  # schema 0: the whole header was untyped metadata
        contract = contract_from_dict(header, path)
        info = WeightsInfo(int(header.get("epoch", 0)), int(header.get("step", 0)), math.nan,
                           float(header.get("val_dice", math.nan)))
    train_state = header.get("train_state")
    if train_state is not None:
        train_state = unflatten_state(train_state, tensors)
    return Checkpoint(weights, contract, info, train_state)


def load_resumable(path: Path, contract: RunContract) -> Checkpoint:
    """An interrupted run's checkpoint, refused unless it can continue the run ``contract`` describes: it holds a
    training state, for the same model, on the same split (other split ids would mix validation or test images
    into training). The same ids with other files get a warning."""
    checkpoint = load_checkpoint(path)
    if checkpoint.train_state is None:
        raise MedsegError(path, "has no training state to resume from")
    recorded = checkpoint.contract
    if recorded.model.name != contract.model.name:
        raise MedsegError(path, f"was written for model {recorded.model.name!r}, the config says "
                                f"{contract.model.name!r}")
    now, then = contract.data, recorded.data
    if now.splits != then.splits:
        moved = len(set(now.splits.train) ^ set(then.splits.train))
        raise MedsegError(path, f"the data's split differs from the one this run started with ({moved} training "
                                "ids differ); resuming would train on other images. Restore the data or start a "
                                "new run")
    if now.hash != then.hash:
        get_logger().warning("%s: the data has the recorded ids but other files (hash %s, recorded %s)", now.root,
                             now.hash, then.hash)
    return checkpoint


def load_weights_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path) -> None:
    """``model.load_state_dict(weights)`` with a one-line error naming the file when they do not fit."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MedsegError(path, f"weights do not fit model {model.spec.name!r}: {first}") from None


def build_model(checkpoint: Checkpoint, path: Path, prune_depth: int | None = None) -> torch.nn.Module:
    """The network a checkpoint describes, with its weights, in eval mode; ``prune_depth`` runs a UNet++ at that
    depth."""
    model = checkpoint.contract.model.build()
    load_weights_into(model, checkpoint.weights, path)
    if prune_depth is not None:
        if not hasattr(model, "prune_depth"):
            raise MedsegError(path, f"model {model.spec.name!r} cannot be pruned (only unetpp)")
        try:
            model.prune_depth = prune_depth
        except ValueError as exc:
            raise MedsegError(path, str(exc)) from None
    return model.eval()


def load_model(path: Path, device: str | torch.device = "cpu",
               prune_depth: int | None = None) -> tuple[torch.nn.Module, RunContract]:
    """The model of a weights file on ``device`` (eval mode) and its contract."""
    checkpoint = load_checkpoint(path)
    return build_model(checkpoint, Path(path), prune_depth).to(device), checkpoint.contract
