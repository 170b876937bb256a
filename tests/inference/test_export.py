"""ONNX and TorchScript export: parity with PyTorch for every zoo model, metadata, ONNX Runtime prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from medseg.inference.export import export_model
from medseg.inference.predictor import OnnxBackend, Predictor
from medseg.inference.predict import predict_paths
from medseg.models import create_model
from medseg.models.blocks import pad_to_multiple
from tests.helpers import save_model
from tests.models.test_zoo import TINY


@pytest.mark.parametrize("name", sorted(TINY))
def test_onnx_and_torchscript_match_pytorch(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, 2, 3, **TINY[name]).eval()
    save_model(tmp_path / "m.safetensors", model, n_classes=3, class_names=["bg", "a", "b"])
    onnx_model = OnnxBackend(export_model(tmp_path / "m.safetensors", "onnx", tmp_path / "m.onnx"))
    export_model(tmp_path / "m.safetensors", "torchscript", tmp_path / "m.pt")
    extra = {"medseg.json": ""}
    scripted = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert json.loads(extra["medseg.json"])["contract"]["inference"]["class_names"] == ["bg", "a", "b"]
    assert onnx_model.meta["contract"]["model"]["name"] == name and onnx_model.stride == model.stride
    for shape in [(1, 2, 37, 53), (3, 2, 64, 32)]:  # dynamic batch and spatial size
        x = torch.randn(*shape)
        with torch.no_grad():
            reference = model(x)
            padded, (h, w) = pad_to_multiple(x, model.stride)
            torch.testing.assert_close(onnx_model(x), reference, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(scripted(padded)[..., :h, :w], reference, rtol=1e-4, atol=1e-4)


def test_predict_with_onnxruntime_backend_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet", 1, 1, widths=(4, 8, 16)).eval()
    save_model(tmp_path / "best_model.safetensors", model)
    image = (np.random.default_rng(0).random((70, 90)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    for backend in ("torch", "onnxruntime"):
        predict_paths(Predictor.from_run(tmp_path, backend), [tmp_path / "x.png"], tmp_path / backend,
                      save_probabilities=True)
    assert (tmp_path / "best_model.onnx").is_file()
    a, b = tifffile.imread(tmp_path / "torch" / "x_prob.tif"), tifffile.imread(tmp_path / "onnxruntime" / "x_prob.tif")
    np.testing.assert_allclose(a, b, atol=1e-5)
    exported = Predictor.from_run(tmp_path / "best_model.onnx")  # an .onnx file alone carries its contract
    np.testing.assert_allclose(exported.probabilities(image[..., None] / 255.0), a, atol=1e-5)
