"""Inference and prediction: tiling equals whole-image inference, files/folders/stacks of any size, the notebook
Predictor, TTA, fold ensembles and post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch import nn

from medseg.run.contract import PostprocessSpec
from medseg.inference.predictor import Predictor, TorchBackend, prepare_for_inference
from medseg.inference.postprocess import postprocess
from medseg.inference.predict import predict_paths
from medseg.inference.sliding_window import sliding_window_logits
from medseg.workflow import train
from medseg.errors import MedsegError
from tests.helpers import contract_for


class PointwiseNet(nn.Module):
    """All-conv toy model with a 1x1 receptive field: tiling cannot change its output anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(2, 8, 1), nn.Tanh(), nn.Conv2d(8, 3, 1))

    def forward(self, x):
        return self.net(x)


class LocalNet(nn.Module):
    """All-conv toy model with a 5x5 receptive field."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 3, padding=1))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("shape", [(70, 45), (64, 64), (33, 100)])
def test_tiled_equals_whole_image_for_a_pointwise_model(shape):
    torch.manual_seed(0)
    model = PointwiseNet().eval()
    image = np.random.default_rng(0).normal(size=(*shape, 2)).astype(np.float32)
    whole = sliding_window_logits(model, image, tile=None)
    tiled = sliding_window_logits(model, image, tile=24, overlap=0.5, batch_size=3)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_tiled_equals_whole_image_away_from_tile_borders_for_a_local_model():
    torch.manual_seed(0)
    model = LocalNet().eval()
    image = np.random.default_rng(1).normal(size=(40, 40, 2)).astype(np.float32)
    whole = sliding_window_logits(model, image, tile=None)
    # Tiles of 24 with overlap 0 start at 0 and 16; pixels 2+ away from every tile edge see identical context.
    tiled = sliding_window_logits(model, image, tile=24, overlap=0.0)
    assert np.abs(tiled - whole).max() > 1e-4  # the borders do differ: the check below is not vacuous
    inner = (slice(2, 14), slice(2, 14))
    np.testing.assert_allclose(tiled[:, inner[0], inner[1]], whole[:, inner[0], inner[1]], atol=1e-5)


def test_postprocess_options():
    labels = np.zeros((10, 10), np.int64)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0  # a hole
    labels[8, 8] = 1  # a speck
    assert postprocess(labels, PostprocessSpec(largest_component=True))[8, 8] == 0
    small = postprocess(labels, PostprocessSpec(min_size=2))
    assert small[8, 8] == 0 and small[1, 1] == 1
    assert postprocess(labels, PostprocessSpec(fill_holes=True))[3, 3] == 1
    assert (postprocess(labels, PostprocessSpec()) == labels).all()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synthetic_data):
    from tests.helpers import tiny_config

    config = tiny_config(synthetic_data, epochs=1)
    run = tmp_path_factory.mktemp("run") / "run"
    train(config, run)
    return run


def test_predict_files_of_any_size_and_stacks(trained_run, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((90, 130)) * 255).astype(np.uint8)).save(tmp_path / "big.png")
    Image.fromarray((rng.random((7, 5)) * 255).astype(np.uint8)).save(tmp_path / "tiny.png")
    stack = (rng.random((3, 40, 50)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    predictor = Predictor.from_run(trained_run, tta=True)
    written = predict_paths(predictor, [tmp_path / "big.png", tmp_path / "tiny.png", tmp_path / "stack.tif"], out,
                            save_probabilities=True, save_overlays=True)
    assert [p.name for p in written] == ["big.png", "tiny.png", "stack.tif"]
    assert np.asarray(Image.open(out / "big.png")).shape == (90, 130)
    assert np.asarray(Image.open(out / "tiny.png")).shape == (7, 5)
    predicted_stack = tifffile.imread(out / "stack.tif")
    assert predicted_stack.shape == (3, 40, 50) and set(np.unique(predicted_stack)) <= {0, 255}
    assert (out / "big_overlay.png").is_file() and (out / "stack_001_overlay.png").is_file()
    probability = tifffile.imread(out / "big_prob.tif")
    assert probability.shape == (90, 130) and 0 <= probability.min() and probability.max() <= 1


def test_predict_input_errors(trained_run, tmp_path):
    (tmp_path / "empty").mkdir()
    predictor = Predictor.from_run(trained_run)
    with pytest.raises(MedsegError, match="folder contains no images"):
        predict_paths(predictor, [tmp_path / "empty"], tmp_path / "out")
    with pytest.raises(MedsegError, match="input not found"):
        predict_paths(predictor, [tmp_path / "nope.png"], tmp_path / "out")


@pytest.mark.parametrize("name", ["unet", "unet_se_dw", "unet_ultralight", "unetpp", "resunet", "segnet",
                                  "res_usegnet"])
def test_inference_preparation_keeps_outputs(name):
    import copy

    from medseg.models import create_model
    from tests.models.test_zoo import TINY

    torch.manual_seed(0)
    model = create_model(name, 1, 2, **TINY[name])
    model.train()
    model(torch.randn(4, 1, 48, 48))  # non-trivial BatchNorm running statistics
    model.eval()
    x = torch.randn(2, 1, 45, 61)
    with torch.no_grad():
        expected = model(x)
        fast = prepare_for_inference(copy.deepcopy(model))
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules()) or name in ("resunet",
                                                                                              "res_usegnet")
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4)


def test_notebook_predictor_gives_masks_and_probabilities(trained_run):
    predictor = Predictor.from_run(trained_run)
    image = (np.random.default_rng(3).random((50, 70)) * 255).astype(np.uint8)
    mask = predictor.predict(image)
    assert mask.shape == (50, 70) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    result = predictor.predict(image, probabilities=True)
    assert (result.labels == mask).all() and result.probabilities.shape == (50, 70)
    assert ((result.probabilities > predictor.spec.threshold) == (mask > 0)).all()
    np.testing.assert_allclose(predictor.predict(image / 255.0, probabilities=True).probabilities,
                               result.probabilities, atol=1e-6)  # integers are scaled like files


def test_ensemble_averages_member_probabilities_and_composes_with_tta():
    torch.manual_seed(0)
    from medseg.models import create_model

    members = [create_model("unet", 1, 1, widths=(4, 8)).eval() for _ in range(3)]
    spec = contract_for(members[0], patch_size=16).inference
    image = np.random.default_rng(0).random((20, 28, 1)).astype(np.float32)
    for tta in (False, True):
        from dataclasses import replace

        tta_spec = replace(spec, tta=tta)
        single = [Predictor([TorchBackend(m)], tta_spec).probabilities(image) for m in members]
        ensemble = Predictor([TorchBackend(m) for m in members], tta_spec).probabilities(image)
        np.testing.assert_allclose(ensemble, np.mean(single, axis=0), atol=1e-6)
    with_tta = Predictor([TorchBackend(members[0])], replace(spec, tta=True)).probabilities(image)
    assert np.abs(with_tta - Predictor([TorchBackend(members[0])], spec).probabilities(image)).max() > 1e-4



def test_a_scaled_run_predicts_at_its_scale_and_answers_at_the_image_size():
    from dataclasses import replace

    from medseg.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", 1, 1, widths=(4, 8)).eval()
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    spec = contract_for(model, patch_size=None).inference
    image = np.random.default_rng(0).random((80, 120, 1)).astype(np.float32)
    native = Predictor([TorchBackend(model)], spec).probabilities(image)
    scaled = Predictor([TorchBackend(model)], replace(spec, scale=0.5)).probabilities(image)
    assert seen == [(80, 120), (40, 60)]  # the network saw the image resampled by the run's scale
    assert native.shape == scaled.shape == (80, 120)  # and the answer comes back at the image's size
