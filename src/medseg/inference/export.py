"""Export a trained run for deployment: ONNX (run with ONNX Runtime) or TorchScript.

The exported graph is the model's core on inputs whose height and width are multiples of ``stride`` (any batch,
any such size: dynamic axes); padding to the stride and cropping back happen outside the graph, in
:class:`~medseg.inference.predictor.OnnxBackend` or the caller. Metadata stored with the file (ONNX
``metadata_props`` / TorchScript extra file ``medseg.json``): the run contract, the stride and the version.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import medseg
from medseg.run.folder import resolve_weights
from medseg.run.weights import load_model
from medseg.run.contract import RunContract
from medseg.errors import MedsegError
from medseg.files import atomic_write_bytes

FORMATS = ("onnx", "torchscript")


class StrideCore(nn.Module):
    """The model without its padding wrapper: input ``N x C x H x W`` with H, W multiples of the stride."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_padded(x)


def export_metadata(contract: RunContract, model: nn.Module) -> dict[str, Any]:
    return {
        "contract": contract.to_dict(), "stride": int(model.stride), "medseg_version": medseg.__version__,
        "input": "N x C x H x W float32, H and W multiples of stride, normalised as contract.inference.normalize "
                 "says", "output": "logits N x K x H x W (K=1: sigmoid, else softmax)",
    }


def export_model(weights: str | Path, fmt: str, out: str | Path, opset: int = 17) -> Path:
    """Export ``weights`` (a run folder's best model, or a checkpoint file) to ``out``."""
    if fmt not in FORMATS:
        raise MedsegError("--format", f"unknown format {fmt!r}; choose {' or '.join(FORMATS)}")
    model, contract = load_model(resolve_weights(weights))
    core = StrideCore(model)
    example = torch.randn(1, contract.model.in_channels, 2 * model.stride, 2 * model.stride)
    metadata = export_metadata(contract, model)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.export{os.getpid()}")
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
        raise MedsegError(out, f"{fmt} export of {contract.model.name!r} failed: {type(exc).__name__}: "
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
