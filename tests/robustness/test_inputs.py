"""Robustness: bad or unusual input files. Each case is a row of docs/robustness.md."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg.cli import main
from medseg.data.datasets import load_items, load_sample, split_items
from medseg.data.readers import read_image, read_mask
from medseg.data.intensity import normalize
from medseg.inference.predictor import Predictor, TorchBackend
from medseg.errors import MedsegError
from medseg.models import create_model
from tests.helpers import contract_for


def _one_line(exc: MedsegError) -> str:
    text = f"medseg: error: {exc}"
    assert "\n" not in text
    return text


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


def _dataset(root, n=3, size=(8, 8)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        _png(root / "images" / f"c{i}.png", np.full(size, 40 * i, np.uint8))
        _png(root / "masks" / f"c{i}.png", np.zeros(size, np.uint8))
    return root


def test_zero_byte_file(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(MedsegError, match="empty file") as info:
        read_image(tmp_path / "a.png")
    assert "a.png" in _one_line(info.value)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif"])
def test_truncated_files(tmp_path, ext):
    path = tmp_path / f"t{ext}"
    pixels = (np.random.default_rng(0).random((128, 128)) * 255).astype(np.uint8)
    if ext == ".tif":
        tifffile.imwrite(path, pixels)
    else:
        _png(path, pixels)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(MedsegError, match="cannot decode"):
        read_image(path)


def test_wrong_extension_is_decoded_by_content_and_garbage_is_refused(tmp_path):
    jpeg_as_png = tmp_path / "really_a_jpeg.png"
    Image.fromarray(np.full((6, 6), 100, np.uint8)).save(jpeg_as_png, format="JPEG")
    assert read_image(jpeg_as_png).shape == (6, 6, 1)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(MedsegError, match="cannot decode"):
        read_image(text)


def test_16_bit_image(tmp_path):
    path = _png(tmp_path / "a.png", np.array([[0, 65535]], np.uint16))
    assert read_image(path)[0, :, 0].tolist() == [0.0, 1.0]


def test_16_bit_images_are_scaled_by_their_bit_depth_not_their_content(tmp_path):
    """Bug: a 16-bit image whose values stayed under 256 was divided by 255, a brighter one by 65535: 257x apart."""
    dark = _png(tmp_path / "dark.png", np.array([[0, 200]], np.uint16))
    bright = _png(tmp_path / "bright.png", np.array([[200, 40000]], np.uint16))
    assert read_image(dark)[0, 1, 0] == read_image(bright)[0, 0, 0] == pytest.approx(200 / 65535)


def test_constant_image_normalises_and_predicts_finite(tmp_path):
    image = np.zeros((20, 30, 1), np.float32)
    assert np.isfinite(normalize(image, "zscore")).all()
    model = create_model("unet", 1, 1, widths=(4, 8)).eval()
    result = Predictor([TorchBackend(model)], contract_for(model, patch_size=16).inference).predict(image, True)
    assert result.labels.shape == (20, 30) and np.isfinite(result.probabilities).all()


@pytest.mark.parametrize("shape", [(1, 1), (100000, 2), (2, 3000)])
def test_extreme_shapes_predict(shape):
    model = create_model("unet", 1, 1, widths=(2, 4)).eval()
    image = np.random.default_rng(0).random((*shape, 1)).astype(np.float32)
    predictor = Predictor([TorchBackend(model)], contract_for(model, patch_size=256).inference, batch_size=64)
    assert predictor.predict(image).shape == shape


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))
    with pytest.raises(MedsegError, match="decompression bomb"):
        read_image(path)


def test_symlink_escaping_the_dataset_root(tmp_path):
    root = _dataset(tmp_path / "data")
    outside = _png(tmp_path / "secret.png", np.zeros((8, 8), np.uint8))
    (root / "images" / "c9.png").symlink_to(outside)
    _png(root / "masks" / "c9.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(MedsegError, match="resolves outside the dataset root"):
        load_items(root)


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "a/b", ".."])
def test_path_ids_in_split_csv(tmp_path, bad_id):
    root = _dataset(tmp_path / "data")
    (root / "split.csv").write_text(f"id,split\n{bad_id},train\nc0,train\nc1,val\nc2,test\n")
    with pytest.raises(MedsegError, match="invalid id"):
        load_items(root)


def test_duplicate_ids(tmp_path):
    root = _dataset(tmp_path / "data")
    _png(root / "images" / "c0.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(MedsegError, match="duplicate id 'c0'"):
        load_items(root)


def test_id_in_two_splits(tmp_path):
    root = _dataset(tmp_path / "data")
    (root / "split.csv").write_text("id,split\nc0,train\nc0,test\nc1,val\nc2,train\n")
    with pytest.raises(MedsegError, match="listed twice"):
        load_items(root)


def test_non_utf8_file_name(tmp_path):
    root = _dataset(tmp_path / "data")
    name = os.fsdecode(b"bad\xff.png")
    _png(root / "images" / name, np.zeros((8, 8), np.uint8))
    with pytest.raises(MedsegError, match="not valid UTF-8"):
        load_items(root)


def test_empty_split(tmp_path, capsys):
    root = _dataset(tmp_path / "data")
    (root / "split.csv").write_text("id,split\nc0,train\nc1,train\nc2,train\n")
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--val-fraction", "0"])
    assert code == 2 and "the val split is empty" in capsys.readouterr().err
    assert split_items(load_items(root), val_fraction=0.0).test == []


def test_rgb_mask_and_out_of_range_values(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    with pytest.raises(MedsegError, match="colour"):
        read_mask(_png(tmp_path / "rgb.png", rgb))
    with pytest.raises(MedsegError, match=r"unexpected mask values \[0, 3\]; expected 0..2"):
        read_mask(_png(tmp_path / "m.png", np.array([[0, 3]], np.uint8)), n_classes=3)


def test_image_mask_size_mismatch(tmp_path):
    root = _dataset(tmp_path / "data")
    _png(root / "masks" / "c1.png", np.zeros((9, 8), np.uint8))
    with pytest.raises(MedsegError, match="mask size 8x9 does not match image size 8x8"):
        load_sample(load_items(root)[1], None, 2)


def test_nan_and_inf_in_float_tiff(tmp_path):
    for value in (np.nan, np.inf):
        tifffile.imwrite(tmp_path / "f.tif", np.array([[0.5, value]], np.float32))
        with pytest.raises(MedsegError, match="NaN or infinite"):
            read_image(tmp_path / "f.tif")
