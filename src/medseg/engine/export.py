"""Export a trained run for deployment: ONNX (run with ONNX Runtime) or TorchScript.

The exported graph is the model's core on inputs whose height and width are multiples of ``stride`` (any batch,
any such size: dynamic axes); padding to the stride and cropping back happen outside the graph, in
:class:`OnnxModel` or the caller. Metadata stored with the file (ONNX ``metadata_props`` / TorchScript extra file
``medseg.json``): model spec, stride, input channels, normalisation, patch size, threshold, class names, version.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import medseg
from medseg.engine.checkpoint import atomic_write_bytes, load_model, resolve_weights
from medseg.errors import MedsegError
from medseg.models.blocks import pad_to_multiple

FORMATS = ("onnx", "torchscript")


class StrideCore(nn.Module):
    """The model without its padding wrapper: input ``N x C x H x W`` with H, W multiples of the stride."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_padded(x)


def export_metadata(meta: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    return {
        "model": meta["model"], "stride": int(model.stride), "data": meta.get("data", {}),
        "threshold": meta.get("threshold", 0.5), "class_names": meta.get("class_names"),
        "medseg_version": medseg.__version__, "input": "N x C x H x W float32, H and W multiples of stride, "
        "normalised as data.normalize says", "output": "logits N x K x H x W (K=1: sigmoid, else softmax)",
    }


def export_model(weights: str | Path, fmt: str, out: str | Path, opset: int = 17) -> Path:
    """Export ``weights`` (a run folder's best model, or a checkpoint file) to ``out``."""
    if fmt not in FORMATS:
        raise MedsegError("--format", f"unknown format {fmt!r}; choose {' or '.join(FORMATS)}")
    model, meta = load_model(resolve_weights(weights))
    core = StrideCore(model)
    channels = meta["model"]["in_channels"]
    example = torch.randn(1, channels, 2 * model.stride, 2 * model.stride)
    metadata = export_metadata(meta, model)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.export")
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 marks TorchScript and the TorchScript-based ONNX exporter deprecated; both still work
            # for these graphs, and the torch.export-based exporter needs onnxscript and cannot yet express the
            # dynamic padding these models use.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            payload = _export_bytes(core, example, fmt, metadata, tmp, opset)
    except MedsegError:
        raise
    except Exception as exc:
        raise MedsegError(out, f"{fmt} export of {meta['model']['name']!r} failed: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_bytes(out, payload)
    return out


def _export_bytes(core: nn.Module, example: torch.Tensor, fmt: str, metadata: dict, tmp: Path, opset: int) -> bytes:
    if fmt == "onnx":
        import onnx

        torch.onnx.export(core, (example,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "logits": {0: "batch", 2: "height", 3: "width"}})
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = "medseg", json.dumps(metadata)
        return proto.SerializeToString()
    traced = torch.jit.trace(core, example, check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={"medseg.json": json.dumps(metadata)})
    return buffer.getvalue()


class OnnxModel:
    """An exported ONNX model as a callable ``N x C x H x W -> N x K x H x W`` for any H, W (pads to the stride)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.meta = json.loads(self.session.get_modelmeta().custom_metadata_map["medseg"])
        except Exception as exc:
            raise MedsegError(path, f"not a medseg ONNX export ({type(exc).__name__})") from None
        self.stride = int(self.meta["stride"])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        padded, (height, width) = pad_to_multiple(batch.float().cpu(), self.stride)
        logits = self.session.run(None, {"image": np.ascontiguousarray(padded.numpy())})[0]
        return torch.from_numpy(logits[..., :height, :width])

    def eval(self) -> "OnnxModel":
        return self


def load_exported(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """An ONNX export as a callable model plus its metadata (shaped like a checkpoint's)."""
    model = OnnxModel(path)
    return model, model.meta
