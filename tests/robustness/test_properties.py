"""Property-based tests (hypothesis) of the readers, the tiling code and the metrics."""

from __future__ import annotations

import numpy as np
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from medseg.data.readers import read_image, read_mask
from medseg.inference.sliding_window import sliding_window_logits
from medseg.errors import MedsegError
from medseg.metrics import confusion_counts, scores_from_counts

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(height=st.integers(1, 40), width=st.integers(1, 40), channels=st.sampled_from([1, 2, 3, 4]),
       dtype=st.sampled_from(["uint8", "uint16", "float32"]), fmt=st.sampled_from(["png", "tif"]),
       seed=st.integers(0, 2**16))
def test_reader_round_trips_or_explains(tmp_path_factory, height, width, channels, dtype, fmt, seed):
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    if dtype == "float32":
        pixels = rng.random(shape).astype(np.float32)
    else:
        pixels = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
    path = tmp_path_factory.mktemp("r") / f"x.{fmt}"
    try:
        if fmt == "tif":
            tifffile.imwrite(path, pixels, photometric="rgb" if channels in (3, 4) else "minisblack")
        else:
            Image.fromarray(pixels).save(path)
    except (TypeError, ValueError, OSError, KeyError):
        return  # this combination cannot be written as that format; nothing to read
    try:
        image = read_image(path)
    except MedsegError:
        return  # a documented, one-line refusal is an acceptable outcome
    assert image.dtype == np.float32 and image.shape[:2] == (height, width) and np.isfinite(image).all()
    assert image.shape[2] in (1, 3)


@FAST
@given(data=st.binary(min_size=0, max_size=300), suffix=st.sampled_from([".png", ".jpg", ".tif", ".gif", ".bmp"]))
def test_reader_on_random_bytes_never_crashes(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("b") / f"junk{suffix}"
    path.write_bytes(data)
    for reader in (read_image, read_mask):
        try:
            reader(path)
        except MedsegError as exc:
            assert "\n" not in str(exc)


class _Pointwise(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, 2, 1)

    def forward(self, x):
        return self.conv(x)


@FAST
@given(height=st.integers(1, 70), width=st.integers(1, 70), channels=st.integers(1, 3), tile=st.integers(4, 32),
       overlap=st.floats(0.0, 0.9), batch=st.integers(1, 5))
def test_tiling_covers_every_pixel_exactly(height, width, channels, tile, overlap, batch):
    model = _Pointwise(channels).eval()
    image = np.random.default_rng(height * 71 + width).normal(size=(height, width, channels)).astype(np.float32)
    tiled = sliding_window_logits(model, image, tile, overlap, batch)
    whole = sliding_window_logits(model, image, None)
    assert tiled.shape == (2, height, width) and np.isfinite(tiled).all()
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


masks = st.integers(1, 12).flatmap(lambda h: st.integers(1, 12).flatmap(
    lambda w: st.tuples(st.lists(st.integers(0, 1), min_size=h * w, max_size=h * w).map(
        lambda v: np.array(v).reshape(h, w)), st.lists(st.integers(0, 1), min_size=h * w, max_size=h * w).map(
        lambda v: np.array(v).reshape(h, w)))))


@settings(max_examples=200, deadline=None)
@given(pair=masks)
def test_dice_and_iou_bounded_symmetric_and_one_on_identity(pair):
    a, b = pair
    ab = scores_from_counts(confusion_counts(a, b, 2)[1])
    ba = scores_from_counts(confusion_counts(b, a, 2)[1])
    for name in ("dice", "iou"):
        assert 0.0 <= ab[name] <= 1.0
        assert ab[name] == ba[name]
        assert scores_from_counts(confusion_counts(a, a, 2)[1])[name] == 1.0
    assert ab["iou"] <= ab["dice"] + 1e-12
