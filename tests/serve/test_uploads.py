"""Multi-class masks in the legend colours with per-class areas, and DICOM and NIfTI uploads (single slices as
images, volumes as volumes), on a 3-class pointwise 'network' whose answer is known: bright pixels are class 1,
dark ones class 2."""

from __future__ import annotations

import gzip
import io
import threading

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from medseg.data.readers import as_unit_image, volume_slice  # noqa: E402
from medseg.data.volumes import read_nifti  # noqa: E402
from medseg.inference.predictor import Predictor  # noqa: E402
from medseg.inference.predict import predict_volume  # noqa: E402
from medseg.visualize import class_colour, class_palette  # noqa: E402
from medseg.models import create_model  # noqa: E402
from medseg.serve.app import ServeSettings, create_app  # noqa: E402
from tests.helpers import contract_for  # noqa: E402

CLASSES = ("background", "bright", "dark")
SPACING = (0.8, 0.9, 2.5)


class Pointwise:
    """Logits of a z-scored grey image: class 1 above +0.75, class 2 below -0.75, background between. With
    ``gate``, every call waits for it."""

    device = torch.device("cpu")

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate, self.calls = gate, 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(timeout=30)
        x = batch[:, :1]
        return torch.cat([torch.ones_like(x), 4 * x - 2, -4 * x - 2], dim=1)


def three_class_predictor(backend: Pointwise | None = None) -> Predictor:
    contract = contract_for(create_model("unet", 1, 3, widths=(4, 8)), n_classes=3, patch_size=None,
                            class_names=CLASSES)
    return Predictor([backend or Pointwise()], contract.inference, contract)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return three_class_predictor()


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, ServeSettings())) as test_client:
        yield test_client


def smooth(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A smooth random field in [0, 1000]: large bright and dark regions."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3)
    return (field - field.min()) / (field.max() - field.min()) * 1000


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def nifti(data: np.ndarray, affine: np.ndarray | None = None, zipped: bool = True) -> bytes:
    image = nib.Nifti1Image(data, affine if affine is not None else np.diag([*SPACING, 1.0]))
    image.header.set_zooms(SPACING[: data.ndim] if data.ndim <= 3 else (*SPACING, 1.0))
    raw = image.to_bytes()
    return gzip.compress(raw) if zipped else raw


def lps(body: bytes) -> np.ndarray:
    """The voxel-to-LPS affine of a DICOM file's rows, columns and frames (as stored), from its header."""
    ds = pydicom.dcmread(io.BytesIO(body))
    along_row, down_column = np.array(ds.ImageOrientationPatient, float).reshape(2, 3)
    affine = np.eye(4)
    affine[:3, 0] = down_column * float(ds.PixelSpacing[0])
    affine[:3, 1] = along_row * float(ds.PixelSpacing[1])
    affine[:3, 2] = np.cross(along_row, down_column) * float(ds.SliceThickness)
    affine[:3, 3] = [float(v) for v in ds.ImagePositionPatient]
    return affine


def dicom(**changes) -> bytes:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    for key, value in changes.items():
        if value is None:
            delattr(dataset, key)
        else:
            setattr(dataset, key, value)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset)
    return buffer.getvalue()


def post(client, body: bytes, fmt: str = "png", content_type: str = "application/octet-stream"):
    return client.post("/v1/segment", content=body, params={"format": fmt}, headers={"Content-Type": content_type})


def test_multi_class_png_is_in_the_legend_colours_and_json_has_per_class_areas(client, predictor):
    image = (smooth((48, 64)) / 1000 * 255).astype(np.uint8)
    labels = predictor.predict(as_unit_image(image, 1))
    assert set(np.unique(labels)) == {0, 1, 2}
    response = post(client, png(image), content_type="image/png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    mask = Image.open(io.BytesIO(response.content))
    assert mask.mode == "P" and (np.asarray(mask) == labels).all()  # pixel values are the class ids
    rgba = np.asarray(mask.convert("RGBA"))
    assert (rgba[..., :3] == class_palette(3)[labels]).all() and ((rgba[..., 3] > 0) == (labels > 0)).all()
    assert tuple(rgba[labels == 2][0]) == (*class_colour(2), 255)

    summary = post(client, png(image), "json", "image/png").json()
    assert summary["spacing_mm"] is None and (summary["width"], summary["height"]) == (64, 48)
    for entry in summary["classes"]:
        k = entry["id"]
        assert entry["name"] == CLASSES[k] and entry["colour"] == list(class_colour(k))
        assert entry["area_px"] == (labels == k).sum() and entry["area_mm2"] is None
        assert sum(o["area_px"] for o in entry["objects"]) == entry["area_px"]
    model = client.get("/v1/model").json()
    assert model["classes"] == list(CLASSES) and model["colours"] == [None, [0, 200, 255], [255, 200, 0]]


def test_a_nifti_volume_comes_back_as_a_nifti_with_its_shape_and_affine(client, predictor, tmp_path):
    data = smooth((20, 24, 6), seed=1).astype(np.int16)
    affine = np.array([[0, -0.9, 0, 12.0], [0.8, 0, 0, -30.0], [0, 0, 2.5, 7.5], [0, 0, 0, 1]])
    body = nifti(data, affine)
    (tmp_path / "case.nii.gz").write_bytes(body)
    volume = read_nifti(tmp_path / "case.nii.gz")  # transposed: segmented in canonical axes, answered as sent
    expected = volume.to_file(predict_volume(predictor, volume).labels)
    assert set(np.unique(expected)) == {0, 1, 2} and volume.data.shape[:3] == (24, 20, 6)
    response = post(client, body, "nifti", "application/gzip")
    assert response.status_code == 200, response.text
    result = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    assert result.shape == data.shape and result.get_data_dtype() == np.uint8
    np.testing.assert_allclose(result.affine, affine)
    assert (np.asarray(result.dataobj) == expected).all()
    assert post(client, nifti(data, affine, zipped=False), "nifti").content == response.content  # plain .nii

    summary = post(client, body, "json").json()
    assert summary["shape"] == [20, 24, 6] and summary["spacing_mm"] == pytest.approx(SPACING)
    for entry in summary["classes"]:
        voxels = int((expected == entry["id"]).sum())
        assert entry["voxels"] == voxels and entry["volume_mm3"] == pytest.approx(voxels * np.prod(SPACING))
        assert len(entry["objects"][0]["bbox"]) == 6
    refused = post(client, body, "png")
    assert refused.status_code == 422 and "format=nifti" in refused.json()["error"]


def test_a_single_slice_nifti_is_segmented_like_an_image(client, predictor):
    plane = smooth((30, 40), seed=2).astype(np.float32)
    labels = predictor.labels(predictor.probabilities(plane[..., None]))  # its own statistics
    response = post(client, nifti(plane[..., None]), "png")
    assert response.status_code == 200 and (np.asarray(Image.open(io.BytesIO(response.content))) == labels).all()
    summary = post(client, nifti(plane), "json").json()
    assert summary["spacing_mm"] == pytest.approx(SPACING[:2])
    assert summary["classes"][0]["area_mm2"] == pytest.approx((labels == 1).sum() * SPACING[0] * SPACING[1])
    volume = nib.Nifti1Image.from_bytes(gzip.decompress(post(client, nifti(plane), "nifti").content))
    assert volume.shape == (30, 40) and (np.asarray(volume.dataobj) == labels).all()


def test_a_dicom_upload_is_segmented(client, predictor, demo_run):
    from medseg.data.dicom import read_dicom_bytes

    body = dicom()
    volume = read_dicom_bytes(body, "ct")  # one slice: a 2D image in the file's own rows and columns
    image = volume_slice(volume, 2, 0, 1, "ct")
    labels = predictor.labels(predictor.probabilities(image, volume.statistics()))
    assert set(np.unique(labels)) == {0, 1, 2} and volume.orientation.identity
    response = post(client, body, "png", "application/dicom")
    assert response.status_code == 200, response.text
    assert (np.asarray(Image.open(io.BytesIO(response.content))) == labels).all()
    summary = post(client, body, "json", "application/dicom").json()
    spacing = 0.661468
    assert summary["spacing_mm"] == pytest.approx([spacing, spacing])
    for entry in summary["classes"]:
        assert entry["area_px"] == (labels == entry["id"]).sum()
        assert entry["area_mm2"] == pytest.approx(entry["area_px"] * spacing**2)
    unspaced = post(client, dicom(PixelSpacing=None), "json").json()
    assert unspaced["spacing_mm"] is None and unspaced["classes"][0]["area_mm2"] is None
    as_nifti = nib.Nifti1Image.from_bytes(gzip.decompress(post(client, body, "nifti").content))
    assert as_nifti.shape == (128, 128, 1) and (np.asarray(as_nifti.dataobj)[..., 0] == labels).all()
    np.testing.assert_allclose(as_nifti.affine, np.diag([-1.0, -1.0, 1, 1]) @ lps(body))  # LPS as NIfTI's RAS

    with TestClient(create_app(Predictor.from_run(demo_run), ServeSettings())) as binary:
        mask = np.asarray(Image.open(io.BytesIO(post(binary, body).content)))
        assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 255}  # binary masks stay {0, 255}


def test_a_multi_frame_dicom_is_segmented_as_a_volume(client, predictor):
    from medseg.data.dicom import read_dicom_bytes

    frames = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False)).pixel_array
    stack = np.stack([frames, frames[::-1], frames[:, ::-1]])
    body = dicom(NumberOfFrames=3, PixelData=stack.astype(frames.dtype).tobytes())
    volume = read_dicom_bytes(body, "ct")
    expected = volume.to_file(predict_volume(predictor, volume).labels)
    summary = post(client, body, "json", "application/dicom").json()
    assert summary["shape"] == [128, 128, 3] and summary["spacing_mm"] == pytest.approx(volume.spacing)
    for entry in summary["classes"]:
        voxels = int((expected == entry["id"]).sum())
        assert voxels > 0 and entry["voxels"] == voxels
        assert entry["volume_mm3"] == pytest.approx(voxels * np.prod(volume.spacing))
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(post(client, body, "nifti").content))
    assert (np.asarray(labels.dataobj) == expected).all()
    np.testing.assert_allclose(labels.affine, np.diag([-1.0, -1.0, 1, 1]) @ lps(body))


def _huge_nifti_header() -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape((10_000, 10_000, 1_000))
    header.set_data_dtype(np.uint8)
    image = nib.Nifti1Image(np.zeros((1, 1, 1), np.uint8), np.eye(4))  # only the header matters
    raw = bytearray(image.to_bytes())
    raw[:348] = header.binaryblock
    return gzip.compress(bytes(raw) + b"\0" * 1000)


BAD_UPLOADS = {
    "truncated gzip NIfTI": (lambda: nifti(smooth((20, 24, 6)).astype(np.int16))[:300], "json", 422),
    "gzip that is not NIfTI": (lambda: gzip.compress(b"hello" * 200), "json", 422),
    "NIfTI declaring 10^11 voxels": (_huge_nifti_header, "json", 413),
    "NIfTI with NaN": (lambda: nifti(np.full((8, 8, 3), np.nan, np.float32)), "json", 422),
    "NIfTI .hdr without .img": (lambda: b"\0" * 344 + b"ni1\0" + b"\0" * 8, "json", 422),
    "NIfTI with 7 channels": (lambda: nifti(np.zeros((8, 8, 3, 7), np.float32)), "json", 422),
    "truncated DICOM": (lambda: dicom()[:300], "png", 422),
    "DICOM declaring 60000 x 60000": (lambda: dicom(Rows=60_000, Columns=60_000), "png", 413),
    "DICOM without pixel data": (lambda: dicom(PixelData=None), "png", 422),
    "a volume as PNG": (lambda: nifti(smooth((8, 8, 4)).astype(np.int16)), "png", 422),
    "a 2D image as NIfTI": (lambda: png(np.zeros((8, 8), np.uint8)), "nifti", 422),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_a_bad_upload_gets_a_one_line_error_and_the_next_request_works(client, case):
    make, fmt, status = BAD_UPLOADS[case]
    response = post(client, make(), fmt)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and "Traceback" not in body["error"]
    assert post(client, dicom()).status_code == 200


def test_a_volume_counts_all_its_voxels_against_the_pixel_limit(predictor):
    body = nifti(smooth((20, 24, 6)).astype(np.int16))  # 480 pixels a slice, 2,880 voxels
    with TestClient(create_app(predictor, ServeSettings(max_pixels=2_000))) as client:
        response = post(client, body, "json")
        assert response.status_code == 413 and "2,880 voxels exceeds the limit" in response.json()["error"]
        assert post(client, png(np.zeros((40, 40), np.uint8)), "json").status_code == 200


def test_a_volume_that_times_out_stops_at_its_next_slice():
    gate = threading.Event()
    backend = Pointwise(gate)
    with TestClient(create_app(three_class_predictor(backend), ServeSettings(timeout_s=0.5))) as client:
        response = post(client, nifti(smooth((16, 16, 8)).astype(np.int16)), "nifti")
        assert response.status_code == 504
        gate.set()
        assert post(client, png(np.zeros((16, 16), np.uint8)), "json").status_code == 200  # queued behind it
    assert backend.calls == 2  # the volume's first slice, then the image: the other 7 slices were never run
