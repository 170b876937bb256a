"""Applying trained models to images: the :class:`Backend` protocol (PyTorch or ONNX Runtime), flip TTA, fold
ensembles, thresholds and post-processing, behind one :class:`Predictor`.

    predictor = Predictor.from_run("runs/x")          # the run's selected weights; a CV run gives its ensemble
    mask = predictor.predict(array)                   # H x W uint8 class ids
    result = predictor.predict(array, probabilities=True)   # .labels and .probabilities
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from medseg.data.readers import as_unit_image
from medseg.data.intensity import normalize
from medseg.data.transforms import IMAGE_RESAMPLING, resampled_shape, resize_image, scaled_shape
from medseg.run.folder import member_weights
from medseg.run.weights import load_model
from medseg.run.contract import InferenceSpec, RunContract, contract_from_dict
from medseg.inference.postprocess import postprocess, to_labels
from medseg.inference.sliding_window import sliding_window_batch
from medseg.errors import MedsegError
from medseg.models.blocks import pad_to_multiple

BACKENDS = ("torch", "onnxruntime")


class Backend(Protocol):
    """A network as a function: normalised ``N x C x H x W`` float32 -> logits ``N x K x H x W`` for any H, W."""

    device: torch.device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d in a Sequential into the conv (PyTorch's
    ``fuse_conv_bn_eval``: the same outputs up to float rounding); the BatchNorm becomes an Identity. In place."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = [name for name, _ in module.named_children()]
        for conv_name, bn_name in zip(names[:-1], names[1:]):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                setattr(module, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(module, bn_name, nn.Identity())
    return model


def prepare_for_inference(model: nn.Module, channels_last: bool = True, fold_bn: bool = True) -> nn.Module:
    """Eval mode, Conv+BN folding and channels_last (the fast CPU path, chosen by measurement in
    benchmarks/run.py). Returns the same module."""
    model.eval()
    if fold_bn:
        fold_batchnorm(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


class TorchBackend:
    """A PyTorch module in eval mode under ``inference_mode``."""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        self.model, self.device = model, torch.device(device)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.to(self.device))


class OnnxBackend:
    """An exported ONNX model in ONNX Runtime (CPU); pads inputs to the model's stride and crops the output."""

    device = torch.device("cpu")

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.meta: dict[str, Any] = json.loads(self.session.get_modelmeta().custom_metadata_map["medseg"])
            self.stride = int(self.meta["stride"])
            self.contract = self.meta["contract"]
        except Exception as exc:
            raise MedsegError(path, f"not a medseg ONNX export, or one from before medseg 0.2 (re-export it) "
                                    f"({type(exc).__name__})") from None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        padded, (height, width) = pad_to_multiple(batch.float().cpu(), self.stride)
        logits = self.session.run(None, {"image": np.ascontiguousarray(padded.numpy())})[0]
        return torch.from_numpy(logits[..., :height, :width])


def flip_tta(backend: Backend, vertical: bool = True, horizontal: bool = True):
    """The backend's logits averaged over the identity and the flips training used: horizontal, vertical, and
    both axes when both."""
    flips = [dims for dims, used in (((3,), horizontal), ((2,), vertical), ((2, 3), horizontal and vertical)) if used]

    def forward(batch: torch.Tensor) -> torch.Tensor:
        logits = backend(batch)
        for dims in flips:
            logits = logits + backend(batch.flip(dims)).flip(dims)
        return logits / (len(flips) + 1)

    return forward


def logits_to_probabilities(logits: np.ndarray) -> np.ndarray:
    """``K x H x W`` logits -> probabilities, in place: sigmoid for K = 1, softmax otherwise."""
    if logits.shape[0] == 1:
        np.negative(logits, out=logits)
        np.exp(logits, out=logits)
        logits += 1.0
        np.reciprocal(logits, out=logits)
        return logits
    logits -= logits.max(axis=0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=0, keepdims=True)
    return logits


@dataclass
class Prediction:
    labels: np.ndarray  # H x W uint8 class ids
    probabilities: np.ndarray  # H x W foreground probability (binary) or K x H x W class probabilities


class Predictor:
    """One model, or an ensemble of folds (probabilities averaged), applied to images of any size as the run's
    inference spec says: normalise -> (resize or resample) -> sliding window (+ flip TTA) -> probabilities ->
    threshold or argmax -> post-processing."""

    def __init__(self, backends: Sequence[Backend], spec: InferenceSpec, contract: RunContract | None = None,
                 batch_size: int = 4) -> None:
        if not backends:
            raise ValueError("a Predictor needs at least one backend")
        self.backends, self.spec, self.contract, self.batch_size = list(backends), spec, contract, batch_size

    @classmethod
    def from_run(cls, run: str | Path, backend: str = "torch", device: str = "cpu",
                 folds: Sequence[int] | None = None, prune_depth: int | None = None, batch_size: int = 4,
                 **overrides: Any) -> "Predictor":
        """A run folder (its selected weights; a cross-validation run: its fold ensemble, or ``folds``) or a
        weights file. ``overrides`` replace inference settings (``threshold``, ``tta``, ``overlap``, ...)."""
        if backend not in BACKENDS:
            raise MedsegError("--backend", f"unknown backend {backend!r}; choose {' or '.join(BACKENDS)}")
        paths, contract = member_weights(run, folds)
        backends = []
        for path in paths:
            member, member_contract = _load_backend(path, backend, device, prune_depth)
            backends.append(member)
            contract = contract or member_contract
        spec = replace(contract.inference, **{k: v for k, v in overrides.items() if v is not None})
        if not 0 < spec.threshold < 1:
            raise MedsegError("--threshold", f"must be between 0 and 1, got {spec.threshold}")
        if not 0 <= spec.overlap <= 0.9:
            raise MedsegError("--overlap", f"must be between 0 and 0.9, got {spec.overlap}")
        return cls(backends, spec, contract, batch_size)

    def forward_for(self, backend: Backend):
        return flip_tta(backend, self.spec.tta_vflip, self.spec.tta_hflip) if self.spec.tta else backend

    def probabilities(self, image: np.ndarray, statistics: tuple[np.ndarray, np.ndarray] | None = None,
                      spacing: Sequence[float] | None = None) -> np.ndarray:
        """Foreground probability ``H x W`` (binary) or class probabilities ``K x H x W`` (float32) of an
        ``H x W x C`` image in reader scale [0, 1]; a volume's slice is normalised with its case's
        ``statistics``, and resampled from its ``spacing`` (mm) to the run's and back."""
        return self.probabilities_batch([image], [statistics], spacing)[0]

    def probabilities_batch(self, images: Sequence[np.ndarray],
                            statistics: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
                            spacing: Sequence[float] | None = None) -> list[np.ndarray]:
        """:meth:`probabilities` of same-size images (of one ``spacing``), their tiles sharing forward batches
        (dynamic batching)."""
        spec = self.spec
        height, width = images[0].shape[:2]
        size = self._network_size(height, width, spacing)
        statistics = statistics or [None] * len(images)
        interpolation = cv2.INTER_LINEAR if spec.resize else IMAGE_RESAMPLING  # as training resampled them
        x = np.stack([resize_image(normalize(image, spec.normalize, stats, spec.intensity), size, interpolation)
                      for image, stats in zip(images, statistics)])
        total: np.ndarray | None = None
        for backend in self.backends:
            logits = sliding_window_batch(self.forward_for(backend), x, None if spec.resize else spec.patch_size,
                                          spec.overlap, self.batch_size, backend.device)
            if size != (height, width):
                logits = np.stack([resize_image(scores.transpose(1, 2, 0), (height, width)).transpose(2, 0, 1)
                                   for scores in logits])
            for scores in logits:
                logits_to_probabilities(scores)
            total = logits if total is None else np.add(total, logits, out=total)
        if len(self.backends) > 1:
            total /= len(self.backends)
        return [scores[0] if scores.shape[0] == 1 else scores for scores in total]

    def _network_size(self, height: int, width: int, spacing: Sequence[float] | None) -> tuple[int, int]:
        """``H x W`` the network sees: the run's whole-image size, the image resampled to the run's spacing (a
        volume's slice) or by the run's scale (a 2D image)."""
        if self.spec.resize:
            return self.spec.resize, self.spec.resize
        if self.spec.spacing is not None and spacing is not None:
            return resampled_shape((height, width), spacing, self.spec.spacing)
        if self.spec.scale is not None and spacing is None:
            return scaled_shape((height, width), self.spec.scale)
        return height, width

    def labels(self, probabilities: np.ndarray) -> np.ndarray:
        """Class ids ``H x W`` (uint8) from probabilities: threshold or argmax, then post-processing."""
        return postprocess(to_labels(probabilities, self.spec.threshold, self.spec.n_classes), self.spec.postprocess)

    def predict(self, image: np.ndarray, probabilities: bool = False) -> np.ndarray | Prediction:
        """The mask of an image array (``H x W`` or ``H x W x C``; integers are scaled like files, floats are
        taken as [0, 1]): ``H x W`` uint8 class ids, or a :class:`Prediction` with probabilities."""
        image = as_unit_image(image, self.spec.channels)
        scores = self.probabilities(image)
        labels = self.labels(scores)
        return Prediction(labels, scores) if probabilities else labels


def _load_backend(path: Path, backend: str, device: str,
                  prune_depth: int | None) -> tuple[Backend, RunContract]:
    """A backend for a weights file, and the contract the file holds (``.onnx`` files run in ONNX Runtime; for a
    ``.safetensors`` file and the onnxruntime backend, the model is exported once and cached beside it)."""
    from medseg.inference.export import export_model

    if backend == "torch" and path.suffix != ".onnx":
        model, contract = load_model(path, device, prune_depth)
        return TorchBackend(prepare_for_inference(model), device), contract
    if prune_depth is not None:
        raise MedsegError("--prune-depth", "pruning applies to the torch backend only")
    if path.suffix != ".onnx":
        onnx_path = path.with_suffix(".onnx")
        if not onnx_path.is_file() or onnx_path.stat().st_mtime < path.stat().st_mtime:
            export_model(path, "onnx", onnx_path)
        path = onnx_path
    onnx = OnnxBackend(path)
    return onnx, contract_from_dict(onnx.contract, path)
