"""Small datasets written in each supported layout, for adapter tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def image_and_mask(seed: int, size=(20, 24)):
    rng = np.random.default_rng(seed)
    image = (rng.random(size) * 255).astype(np.uint8)
    mask = np.zeros(size, np.uint8)
    mask[4:12, 5:15] = 255
    return image, mask


def make_folder(root: Path, n: int = 6, split: bool = True) -> Path:
    for i in range(n):
        image, mask = image_and_mask(i)
        _png(root / "images" / f"case{i}.png", image)
        _png(root / "masks" / f"case{i}.png", mask)
    if split:
        rows = ["id,split"] + [f"case{i},{'test' if i == 0 else 'train'}" for i in range(n)]
        (root / "split.csv").write_text("\n".join(rows) + "\n")
    return root


def make_nnunet(root: Path) -> Path:
    for i in range(3):
        image, mask = image_and_mask(i)
        _png(root / "imagesTr" / f"case_{i:03d}_0000.png", image)
        _png(root / "labelsTr" / f"case_{i:03d}.png", (mask > 0).astype(np.uint8))
    _png(root / "imagesTs" / "case_100_0000.png", image_and_mask(9)[0])
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "EM"}, "labels": {"background": 0, "x": 1},
                                                   "numTraining": 3, "file_ending": ".png"}))
    return root


def make_three_class_folder(root: Path, n: int = 6) -> Path:
    """The folder format with PNG masks holding class ids 0, 1 and 2."""
    make_folder(root, n, split=False)
    for i in range(n):
        mask = np.zeros((20, 24), np.uint8)
        mask[2:9, 2:9], mask[11:18, 12:20] = 1, 2
        _png(root / "masks" / f"case{i}.png", mask)
    return root


def make_tiff_stack(root: Path, frames: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pairs = [image_and_mask(i) for i in range(frames)]
    tifffile.imwrite(root / "train-volume.tif", np.stack([p[0] for p in pairs]), photometric="minisblack")
    tifffile.imwrite(root / "train-labels.tif", np.stack([p[1] for p in pairs]), photometric="minisblack")
    return root


def make_drive(root: Path) -> Path:
    for part, numbers in (("training", (21, 22)), ("test", (1,))):
        for n in numbers:
            image, mask = image_and_mask(n)
            rgb = np.dstack([image, image // 2, image // 3])
            (root / part / "images").mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / part / "images" / f"{n:02d}_{part}.tif", rgb, photometric="rgb")
            _png(root / part / "1st_manual" / f"{n:02d}_manual1.gif", mask)
            fov = np.full(mask.shape, 255, np.uint8)
            fov[:2] = 0
            _png(root / part / "mask" / f"{n:02d}_{part}_mask.gif", fov)
    return root


def make_isic(root: Path) -> Path:
    for i in range(2):
        image, mask = image_and_mask(i)
        _png(root / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{i:07d}.jpg", np.dstack([image] * 3))
        _png(root / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{i:07d}_segmentation.png", mask)
    return root


def make_busi(root: Path) -> Path:
    image, mask = image_and_mask(0)
    _png(root / "benign" / "benign (1).png", np.dstack([image] * 3))
    _png(root / "benign" / "benign (1)_mask.png", mask)
    second = np.zeros_like(mask)
    second[15:18, 18:22] = 255
    _png(root / "benign" / "benign (1)_mask_1.png", second)
    _png(root / "normal" / "normal (3).png", image)
    _png(root / "normal" / "normal (3)_mask.png", np.zeros_like(mask))
    return root


def blob_volume(seed: int, shape=(20, 24, 6), classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """An MRI-like volume (float32, bright ellipsoid parts on noise) and its labels 0..classes-1."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 10.0, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[5:11, 6:12, 1:5] = 1
    if classes > 2:
        labels[11:15, 6:12, 1:5] = 2
    image[labels == 1] += 80
    image[labels == 2] += 160
    return image, labels


AFFINE = np.array([[-0.9, 0, 0, 10.0], [0, 0.9, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def make_msd(root: Path, n: int = 6, classes: int = 3, suffix: str = "", nnunet_labels: bool = False) -> Path:
    """A Decathlon-style task (``suffix="_0000"``: nnU-Net raw) of ``n`` labelled NIfTI volumes."""
    for i in range(n):
        image, labels = blob_volume(i, classes=classes)
        write_nifti(root / "imagesTr" / f"case_{i:03d}{suffix}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", labels)
    write_nifti(root / "imagesTs" / f"case_100{suffix}.nii.gz", blob_volume(100, classes=classes)[0])
    names = ["background", "anterior", "posterior"][:classes]
    labels_json = ({name: k for k, name in enumerate(names)} if nnunet_labels
                   else {str(k): name for k, name in enumerate(names)})
    meta = {"name": "blobs", "labels": labels_json, "modality": {"0": "MRI"}, "numTraining": n,
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
