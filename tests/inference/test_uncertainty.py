"""Where the model is unsure: the entropy map's scale, `medseg predict --uncertainty` writing a map of each input's
shape and a score per input, and higher scores on degraded copies of an image than on the image."""

from __future__ import annotations

import csv
import math

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from torch import nn

from medseg.cli import main
from medseg.inference.predict import predict_paths
from medseg.inference.predictor import Predictor, TorchBackend
from medseg.inference.uncertainty import entropy_map, uncertainty_score
from medseg.models import create_model
from tests.helpers import contract_for


def test_entropy_is_zero_when_certain_and_one_when_undecided():
    binary = entropy_map(np.array([[0.0, 1.0, 0.5]]), 2)
    assert binary[0, :2] == pytest.approx([0, 0], abs=1e-4) and binary[0, 2] == pytest.approx(1.0)
    classes = entropy_map(np.array([[[1.0, 1 / 3]], [[0.0, 1 / 3]], [[0.0, 1 / 3]]]), 3)
    assert classes.shape == (1, 2) and classes[0, 0] == pytest.approx(0, abs=1e-4)
    assert classes[0, 1] == pytest.approx(1.0, abs=1e-5)
    assert math.isnan(uncertainty_score(binary, np.zeros((1, 3), bool)))


def test_predict_writes_a_map_of_each_inputs_shape_and_a_score(demo_run, tmp_path):
    image = demo_run.parent / "data" / "images" / "cells_000.png"
    out = tmp_path / "out"
    assert main(["predict", str(demo_run), str(image), "--out", str(out), "--uncertainty"]) == 0
    shape = np.asarray(Image.open(image)).shape
    assert np.asarray(Image.open(out / "cells_000_uncertainty.png")).shape == shape
    (row,) = csv.DictReader((out / "uncertainty.csv").open())
    assert row["input"] == "cells_000.png" and 0 <= float(row["uncertainty"]) <= 1
    assert row["map"] == "cells_000_uncertainty.png"


class Threshold(nn.Module):
    """Foreground where the image is brighter than mid-grey: confident on a clean two-level image, unsure where
    noise or blur puts pixels between the levels."""

    def forward(self, x):
        return 40 * (x - 0.5)


def test_degraded_copies_of_an_image_score_higher(tmp_path):
    ys, xs = np.mgrid[:96, :96]
    clean = np.where((ys - 48) ** 2 + (xs - 40) ** 2 < 20**2, 200.0, 50.0)
    copies = {"clean": clean, "blurred": ndimage.gaussian_filter(clean, 4),
              "noisy": clean + np.random.default_rng(0).normal(0, 50, clean.shape)}
    for name, pixels in copies.items():
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(tmp_path / f"{name}.png")
    spec = replace(contract_for(create_model("unet", 1, 1, widths=(4, 8)), patch_size=None).inference,
                   normalize="unit")
    predictor = Predictor([TorchBackend(Threshold())], spec)
    predict_paths(predictor, [tmp_path / f"{n}.png" for n in copies], tmp_path / "out", save_uncertainty=True)
    scores = {row["input"]: float(row["uncertainty"])
              for row in csv.DictReader((tmp_path / "out" / "uncertainty.csv").open())}
    assert scores["blurred.png"] > 1.5 * scores["clean.png"] and scores["noisy.png"] > 1.5 * scores["clean.png"]
