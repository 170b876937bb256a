"""Intensity by modality: the normalisation schemes (z-score, over nonzero voxels, nnU-Net's CT scheme), planned
per channel from the modality, and intensity augmentation in normalised units."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file

from medseg.cli import main
from medseg.config import AugmentConfig
from medseg.data.datasets import load_items, load_sample
from medseg.data.intensity import jitter, normalize, statistics
from tests.data import fixtures


def test_the_schemes_channel_by_channel():
    rng = np.random.default_rng(0)
    image = rng.normal(50, 10, (20, 30, 3)).astype(np.float32)
    image[:5, :, 1] = 0  # a masked background in channel 1
    intensity = [None, None, [40.0, 60.0, 50.0, 5.0]]
    out = normalize(image, ["zscore", "nonzero", "ct"], statistics(image, [False, True, False]), intensity)
    assert out[..., 0].mean() == pytest.approx(0, abs=1e-5) and out[..., 0].std() == pytest.approx(1, abs=1e-4)
    assert (out[:5, :, 1] == 0).all() and out[5:, :, 1].mean() == pytest.approx(0, abs=1e-5)
    assert np.allclose(out[..., 2], (np.clip(image[..., 2], 40, 60) - 50) / 5)
    assert out[..., 2].min() == pytest.approx(-2) and out[..., 2].max() == pytest.approx(2)


def test_intensity_augmentation_does_not_depend_on_padding():
    """Bug: a volume's slice was mapped to [0, 1] by its own min and max before brightness, contrast and gamma, so
    their strength depended on the padding value."""
    core = np.random.default_rng(1).normal(0, 1, (16, 16, 1)).astype(np.float32)
    padded = np.pad(core, ((8, 8), (8, 8), (0, 0)), constant_values=-40.0)  # a huge padding value
    config = AugmentConfig(intensity_p=1.0, gamma_p=1.0)
    alone = jitter(core, config, np.random.default_rng(5))
    within = jitter(padded, config, np.random.default_rng(5))[8:24, 8:24]
    assert np.allclose(alone, within) and not np.allclose(alone, core)


def ct_folder(root, n: int = 6):
    """Single-slice CT files in Hounsfield units (rescale intercept -1024) with PNG masks of the bright tissue."""
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (ds.pixel_array + 20 * k).astype(ds.pixel_array.dtype).tobytes()
        (root / "images").mkdir(parents=True, exist_ok=True)
        ds.save_as(root / "images" / f"ct{k}.dcm")
        fixtures._png(root / "masks" / f"ct{k}.png", ((ds.pixel_array - 1024) > 100).astype(np.uint8) * 255)
    return root


@pytest.fixture
def instant_probes(monkeypatch):
    """Planning without timing steps (the schemes do not depend on them)."""
    from medseg import plan

    monkeypatch.setattr(plan, "probe_step", lambda *args, **kwargs: 0.01)


def test_ct_is_planned_by_the_ct_scheme_on_hounsfield_units(tmp_path, instant_probes):
    root = ct_folder(tmp_path / "ct")
    sample = load_sample(load_items(root)[0], None, 2)
    assert sample.image.min() < -500  # HU, as pydicom's modality LUT gives them
    assert main(["plan", str(root), "--budget", "0.2m", "--out", str(tmp_path / "plan.yaml")]) == 0
    choices = {c["key"]: c for c in yaml.safe_load((tmp_path / "plan.yaml").read_text())["choices"]}
    assert choices["data.normalize"]["value"] == "ct" and "channel 0 (CT)" in choices["data.normalize"]["reason"]
    low, high, mean, std = choices["data.intensity"]["value"][0]
    foreground = sample.image[sample.mask > 0, 0]
    assert low <= np.percentile(foreground, 5) and high >= np.percentile(foreground, 95) and low > 100
    assert 100 < mean < high and std > 0
    expected = (np.clip(sample.image, low, high) - mean) / std
    assert np.allclose(normalize(sample.image, "ct", None, [[low, high, mean, std]]), expected)


def test_a_masked_mr_background_is_planned_over_nonzero_voxels(tmp_path, instant_probes):
    root = fixtures.make_msd(tmp_path / "task", n=4)
    for case in range(4):
        image, _ = fixtures.blob_volume(case)
        image[:6] = 0  # skull-stripped: the background exactly 0
        fixtures.write_nifti(root / "imagesTr" / f"case_{case:03d}.nii.gz", image)
    assert main(["plan", str(root), "--budget", "0.2m", "--out", str(tmp_path / "plan.yaml")]) == 0
    choices = {c["key"]: c for c in yaml.safe_load((tmp_path / "plan.yaml").read_text())["choices"]}
    assert choices["data.normalize"]["value"] == "nonzero" and "channel 0 (MRI)" in choices["data.normalize"]["reason"]
    assert "data.intensity" not in choices
