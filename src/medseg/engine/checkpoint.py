"""Checkpoints without pickle: tensors in safetensors, everything else as JSON in the safetensors header.

A checkpoint is one file, ``NAME.safetensors``, written atomically (temp file, fsync, rename), so a kill at any
moment leaves the previous file intact. Its JSON metadata is also written beside it as ``NAME.json`` for people
and tools; the copy inside the safetensors file is the one that is read back.

Training state (optimizer, scheduler, RNG) is flattened: its tensors go into the same file under ``state/`` keys
and its structure into the JSON, so nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from medseg.errors import MedsegError

_META_KEY = "medseg"
_TENSOR_TAG = "__tensor__"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, rename (and fsync the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise MedsegError(path, f"could not write ({exc.strerror or exc}); the previous file is unchanged") from None
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


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


def save_checkpoint(
    path: Path, model_state: dict[str, torch.Tensor], meta: dict[str, Any], train_state: Any = None
) -> None:
    """Write ``path`` (``.safetensors``) with model weights, JSON ``meta`` and optional training state, atomically,
    then the ``.json`` sidecar."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    meta = dict(meta)
    if train_state is not None:
        meta["train_state"] = flatten_state(train_state, tensors, "state/")
    header = json.dumps(meta)
    atomic_write_bytes(path, save_safetensors_bytes(tensors, metadata={_META_KEY: header}))
    sidecar = {k: v for k, v in meta.items() if k != "train_state"}
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Any]:
    """Read a checkpoint: model state dict, metadata, training state (or None). Corrupt files are MedsegErrors."""
    path = Path(path)
    if not path.is_file():
        raise MedsegError(path, "checkpoint not found")
    data = path.read_bytes()
    try:
        tensors = load_safetensors_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"][_META_KEY])
    except (SafetensorError, ValueError, KeyError, TypeError, OSError) as exc:
        raise MedsegError(path, f"not a readable medseg checkpoint ({type(exc).__name__}: {exc})") from None
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    train_state = meta.pop("train_state", None)
    if train_state is not None:
        train_state = unflatten_state(train_state, tensors)
    return model_state, meta, train_state


def load_model(path: Path, device: str | torch.device = "cpu",
               prune_depth: int | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights (eval mode); ``prune_depth`` runs a UNet++
    at that depth."""
    from medseg.models import create_model_from_spec

    state, meta, _ = load_checkpoint(path)
    if "model" not in meta:
        raise MedsegError(path, "checkpoint has no model description")
    model = create_model_from_spec(meta["model"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MedsegError(path, f"weights do not fit model {meta['model'].get('name')!r}: {first}") from None
    if prune_depth is not None:
        if not hasattr(model, "prune_depth"):
            raise MedsegError(path, f"model {meta['model']['name']!r} cannot be pruned (only unetpp)")
        try:
            model.prune_depth = prune_depth
        except ValueError as exc:
            raise MedsegError(path, str(exc)) from None
    return model.to(device).eval(), meta


def resolve_weights(run_or_file: str | Path, which: str = "best_model") -> Path:
    """A run folder's ``<which>.safetensors``, or the file itself."""
    path = Path(run_or_file)
    if path.is_dir():
        candidate = path / f"{which}.safetensors"
        if not candidate.is_file():
            raise MedsegError(path, f"no {which}.safetensors in this run folder")
        return candidate
    return path
