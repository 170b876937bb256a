"""ONNX and TorchScript export: parity with PyTorch for every zoo model, metadata, ONNX Runtime prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medseg.engine.checkpoint import save_checkpoint
from medseg.engine.export import OnnxModel, export_model
from medseg.engine.predict import predict_paths
from medseg.models import create_model
from medseg.models.blocks import pad_to_multiple
from tests.models.test_zoo import TINY


@pytest.mark.parametrize("name", sorted(TINY))
def test_onnx_and_torchscript_match_pytorch(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, 2, 3, **TINY[name]).eval()
    meta = {"model": model.spec, "data": {"n_classes": 3, "normalize": "zscore"}, "threshold": 0.5,
            "class_names": ["bg", "a", "b"]}
    save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), meta)
    onnx_model = OnnxModel(export_model(tmp_path / "m.safetensors", "onnx", tmp_path / "m.onnx"))
    export_model(tmp_path / "m.safetensors", "torchscript", tmp_path / "m.pt")
    extra = {"medseg.json": ""}
    scripted = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert json.loads(extra["medseg.json"])["class_names"] == ["bg", "a", "b"]
    assert onnx_model.meta["model"] == model.spec and onnx_model.stride == model.stride
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
    meta = {"model": model.spec, "data": {"n_classes": 2, "normalize": "zscore", "patch_size": 32}, "threshold": 0.5}
    save_checkpoint(tmp_path / "best_model.safetensors", model.state_dict(), meta)
    image = (np.random.default_rng(0).random((70, 90)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    predict_paths(tmp_path, [tmp_path / "x.png"], tmp_path / "torch", save_probabilities=True)
    predict_paths(tmp_path, [tmp_path / "x.png"], tmp_path / "ort", save_probabilities=True, backend="onnxruntime")
    assert (tmp_path / "best_model.onnx").is_file()
    import tifffile

    a, b = tifffile.imread(tmp_path / "torch" / "x_prob.tif"), tifffile.imread(tmp_path / "ort" / "x_prob.tif")
    np.testing.assert_allclose(a, b, atol=1e-5)
