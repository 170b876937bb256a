"""The one reader: formats, bit depths, channels, mask conventions, and one-line errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg.data.readers import read_image, read_mask, stack_length, write_array
from medseg.errors import MedsegError


def _save(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("ext", [".png", ".bmp", ".gif", ".tif", ".jpg"])
def test_grayscale_formats(tmp_path, ext):
    pixels = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (6, 1))
    path = tmp_path / f"a{ext}"
    if ext == ".tif":
        tifffile.imwrite(path, pixels)
    else:
        _save(path, pixels)
    image = read_image(path)
    assert image.shape == (6, 25, 1) and image.dtype == np.float32
    tolerance = 0.05 if ext == ".jpg" else 1e-6
    np.testing.assert_allclose(image[..., 0], pixels / 255, atol=tolerance)


def test_16_bit_png_is_scaled_by_65535(tmp_path):
    pixels = np.array([[0, 1000, 65535]], dtype=np.uint16)
    path = _save(tmp_path / "a.png", pixels)
    np.testing.assert_allclose(read_image(path)[..., 0], pixels / 65535)


def test_rgba_drops_alpha_and_channel_conversion(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17
    path = _save(tmp_path / "a.png", rgba)
    assert read_image(path).shape == (4, 5, 3)
    gray = _save(tmp_path / "g.png", np.full((4, 5), 9, np.uint8))
    assert read_image(gray, channels=3).shape == (4, 5, 3)
    with pytest.raises(MedsegError, match="has 3 channels, expected 1"):
        read_image(path, channels=1)


def test_mask_conventions(tmp_path):
    assert read_mask(_save(tmp_path / "a.png", np.array([[0, 255]], np.uint8))).tolist() == [[0, 1]]
    assert read_mask(_save(tmp_path / "b.png", np.array([[0, 1]], np.uint8))).tolist() == [[0, 1]]
    assert read_mask(_save(tmp_path / "c.png", np.array([[0, 2, 3]], np.uint8)), n_classes=4).tolist() == [[0, 2, 3]]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _save(p / "m.png", np.array([[0, 128, 255]], np.uint8)), r"unexpected mask values \[0, 128, 255\]"),
        (lambda p: _save(p / "m.png", np.dstack([np.zeros((3, 3), np.uint8), np.full((3, 3), 255, np.uint8),
                                                 np.zeros((3, 3), np.uint8)])), "colour \\(RGB\\)"),
        (lambda p: (p / "m.png").write_bytes(b""), "empty file"),
        (lambda p: (p / "m.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10), "cannot decode"),
    ],
)
def test_bad_masks_are_one_line_errors(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(MedsegError, match=message) as info:
        read_mask(tmp_path / "m.png")
    assert "m.png" in str(info.value) and "\n" not in str(info.value)


def test_tiff_stack_pages(tmp_path):
    stack = np.stack([np.full((4, 6), i * 10, np.uint8) for i in range(3)])
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    assert stack_length(path) == 3
    assert read_image(path, page=2)[0, 0, 0] == pytest.approx(20 / 255)
    with pytest.raises(MedsegError, match="stack of 3"):
        read_image(path)
    with pytest.raises(MedsegError, match="page 5"):
        read_image(path, page=5)


def test_write_array_round_trip(tmp_path):
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_array(tmp_path / "x.png", pixels)
    assert (np.asarray(Image.open(tmp_path / "x.png")) == pixels).all()
    assert not list(tmp_path.glob(".*tmp*"))


def test_stack_frames_are_counted_from_metadata_and_read_one_page_each(tmp_path, monkeypatch):
    """Bug: every frame read decoded the whole image and label stacks again, and counting frames decoded every
    pixel. Reading all frames of an image/label stack pair must read each page once, and counting none."""
    from tests.data import fixtures

    from medseg.data.datasets import load_items, load_sample
    from medseg.data.readers import Reader

    root = fixtures.make_tiff_stack(tmp_path, frames=6)
    reads = {"pages": 0}
    real_asarray = tifffile.TiffPageSeries.asarray

    def counting(self, *args, **kwargs):
        pixels = real_asarray(self, *args, **kwargs)
        reads["pages"] += pixels.shape[0] if "key" not in kwargs and pixels.ndim == 3 else 1
        return pixels

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", counting)
    items = load_items(root, "tiff-stack")
    assert len(items) == 6 and reads["pages"] == 0  # frame counts from the metadata
    reader = Reader()
    samples = [load_sample(item, None, 2, reader) for item in items]
    assert reads["pages"] == 12  # 6 image pages + 6 label pages
    assert [s.mask.sum() for s in samples] == [80] * 6


def test_a_stack_written_page_by_page_has_all_its_frames(tmp_path):
    """Tools that write each page as its own series (tifffile's own page-by-page writer among them): every page
    is a frame, not just the first."""
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as writer:
        for value in (10, 20, 30):
            writer.write(np.full((4, 6), value, np.uint8), photometric="minisblack", contiguous=False)
    assert stack_length(path) == 3
    assert read_image(path, page=2)[0, 0, 0] == pytest.approx(30 / 255)
