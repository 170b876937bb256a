"""Datasets: items found on disk (folder format and adapters for common layouts), splits, and decoded samples.

Folder format (the default, also `../shared/data/*`)::

    DIR/images/<id>.<ext>    DIR/masks/<id>.<ext>    [DIR/regions/<id>.<ext>]    [DIR/split.csv: id,split]

Adapters read the layouts people download (the Medical Segmentation Decathlon, nnU-Net raw, TIFF stacks, DRIVE,
ISIC 2018, BUSI originals) into the same :class:`Item` list; :func:`convert` writes any of them out in the folder
format. A volume (NIfTI, DICOM file or DICOM series folder) is listed as its 2D slices, which share a ``case``:
splits keep a case's slices together and evaluation scores each case in 3D.

Labels may be partial: a mask may leave pixels unlabelled (stored as 128 in the folder format, as the ``ignore``
label of nnU-Net raw), and an image may have no mask at all. Unlabelled images are listed but belong to no split:
they are never trained on or scored, and they are what `medseg suggest` ranks.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from medseg.config import Config, Normalization
from medseg.data.intensity import nonzero_channels
from medseg.data.readers import (UNLABELLED, UNLABELLED_VALUE, Reader, read_channels, volume_info, write_array,
                                 write_mask)
from medseg.data.volumes import IMAGE_EXTENSIONS, Slice, is_nifti, is_volume_file, volume_stem
from medseg.errors import MedsegError, did_you_mean
from medseg.files import atomic_write_csv, read_csv
from medseg.log import get_logger

SPLITS = ("train", "val", "test")
MASK_SUFFIXES = ("", "_mask", "_segmentation", "_label")  # <id>.png, <id>_mask.png (BUSI, Kaggle), ISIC, ...
_SAFE_ID = re.compile(r"^[^/\\\x00]+$")


@dataclass(frozen=True)
class Item:
    """One 2D sample on disk. ``masks`` (OR-merged if several) may be empty for unlabelled images; ``page``
    selects a page of a TIFF stack; ``slice`` is where the sample lies in a volume file (None: the file is a 2D
    image), whose slices share the id ``case`` (None for a single-slice volume); ``split`` is the source's own
    split if it has one; ``unlabelled_value`` is the stored mask value that marks an
    unlabelled pixel in this source's masks (None: every pixel of a mask is labelled)."""

    id: str
    image: Path
    masks: tuple[Path, ...] = ()
    region: Path | None = None
    page: int | None = None
    split: str | None = None
    case: str | None = None
    slice: Slice | None = None
    unlabelled_value: int | None = None
    more_channels: tuple[Path, ...] = ()  # the image's further channels, a file each (nnU-Net raw's _0001, ...)

    @property
    def group(self) -> str:
        """What a split keeps together: the case of a volume's slice, else the item itself."""
        return self.case or self.id

    @property
    def slice_index(self) -> int:
        """The item's place among its case's slices (0 for a 2D image): a volume's slices sort by it."""
        return 0 if self.slice is None else self.slice.index

    @property
    def labelled(self) -> bool:
        """The item has a mask (a dense or a partial one)."""
        return bool(self.masks)


@dataclass
class Sample:
    """A decoded sample: ``image`` float32 ``H x W x C`` in [0, 1] (a volume's slice: as stored), ``mask`` int64
    ``H x W`` class ids (or None), ``region`` bool ``H x W`` (or None = everywhere), ``labelled`` bool ``H x W``
    for a partial mask (None: every pixel labelled; an unlabelled pixel's class id reads 0); a volume's slice also
    carries its case's intensity ``statistics`` (per-channel mean and std, ``1 x 1 x C``) and in-plane ``spacing``
    (mm)."""

    id: str
    image: np.ndarray
    mask: np.ndarray | None
    region: np.ndarray | None = None
    statistics: tuple[np.ndarray, np.ndarray] | None = None
    spacing: tuple[float, float] | None = None
    labelled: np.ndarray | None = None

    @property
    def partial(self) -> bool:
        """The mask leaves some pixels unlabelled."""
        return self.labelled is not None

    def counted(self) -> np.ndarray | None:
        """The pixels that count for the loss and the metrics: labelled and inside the region (None: all)."""
        if self.labelled is None or self.region is None:
            return self.labelled if self.region is None else self.region
        return self.region & self.labelled


def load_sample(item: Item, channels: int | None, n_classes: int, reader: Reader | None = None,
                normalize: Normalization | Sequence[Normalization] = "zscore") -> Sample:
    """Decode an item, checking that image, mask(s) and region agree in size; a volume's slice carries its case's
    statistics for ``normalize``'s schemes. Pass the dataset's ``reader`` to keep its TIFF stacks open between
    items."""
    if reader is None:
        with Reader() as own:
            return load_sample(item, channels, n_classes, own, normalize)
    image = read_channels(reader, (item.image, *item.more_channels), channels, item.page, item.slice)
    mask = None
    for path in item.masks:
        if is_volume_file(path) and item.slice is not None:
            _check_aligned(reader, item.image, path)
            part = reader.slice_labels(path, item.slice, n_classes, item.unlabelled_value)
        else:
            part = reader.mask(path, n_classes, item.page, item.unlabelled_value)
        if part.shape != image.shape[:2]:
            raise MedsegError(path, f"mask size {part.shape[1]}x{part.shape[0]} does not match image size "
                                    f"{image.shape[1]}x{image.shape[0]} ({item.image.name})")
        mask = part if mask is None else np.maximum(mask, part)
    labelled = None
    if mask is not None and (mask == UNLABELLED).any():
        labelled = mask != UNLABELLED
        mask = np.where(labelled, mask, 0)
    region = None
    if item.region is not None:
        region = reader.mask(item.region, 2) > 0
        if region.shape != image.shape[:2]:
            raise MedsegError(item.region, f"region size {region.shape[::-1]} does not match image size "
                                           f"{image.shape[1::-1]}")
    if item.slice is None:
        return Sample(item.id, image, mask, region, labelled=labelled)
    volume = reader.volume(item.image)
    statistics = _case_statistics(reader, (item.image, *item.more_channels), nonzero_channels(normalize, image.shape[2]))
    return Sample(item.id, image, mask, region, statistics,
                  volume.info.in_plane_spacing(item.slice.axis), labelled)


def _case_statistics(reader: Reader, paths: tuple[Path, ...],
                     nonzero: tuple[bool, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel statistics of a case whose channels are in one volume file or spread over several."""
    parts, first = [], 0
    for path in paths:
        count = reader.volume(path).info.channels
        parts.append(reader.volume_statistics(path, nonzero[first:first + count]))
        first += count
    return np.concatenate([p[0] for p in parts], axis=2), np.concatenate([p[1] for p in parts], axis=2)


def _check_aligned(reader: Reader, image: Path, label: Path) -> None:
    """A label volume must have its image's voxel grid: the same shape and affine."""
    image_volume, label_volume = reader.volume(image), reader.volume(label, label=True)
    if label_volume.data.shape[:3] != image_volume.data.shape[:3]:
        raise MedsegError(label, f"label shape {label_volume.data.shape[:3]} differs from its image's "
                                 f"{image_volume.data.shape[:3]} ({image.name})")
    if not np.allclose(label_volume.affine, image_volume.affine, atol=1e-3):
        raise MedsegError(label, f"label affine differs from its image's ({image.name}): they are not aligned")


def volume_items(case: str, image: Path, masks: tuple[Path, ...], split: str | None, axis: int | None = None,
                 unlabelled_value: int | None = None, more_channels: tuple[Path, ...] = ()) -> list[Item]:
    """The 2D items of one image file (and its ``more_channels`` files): a volume's slices along ``axis`` (None: the
    coarsest spacing, as nnU-Net's 2D configuration), ids ``<case>_<zzz>``; a 2D image or single-slice volume is
    one item with id ``case``."""
    shared = {"split": split, "unlabelled_value": unlabelled_value, "more_channels": more_channels}
    if not is_volume_file(image):
        return [Item(case, image, masks, **shared)]
    info = volume_info(image)
    axis = info.slice_axis() if axis is None else axis
    if info.shape[axis] == 1:
        return [Item(case, image, masks, slice=Slice(axis, 0), **shared)]
    return [Item(f"{case}_{z:03d}", image, masks, case=case, slice=Slice(axis, z), **shared)
            for z in range(info.shape[axis])]


def reslice(items: Iterable[Item], axis: int) -> list[Item]:
    """``items`` with every volume sliced along ``axis`` instead (from its header; the dataset is not listed
    again); 2D images and TIFF pages as they are."""
    resliced, done = [], set()
    for item in items:
        if item.slice is None:
            resliced.append(item)
        elif item.group not in done:
            done.add(item.group)
            resliced += volume_items(item.group, item.image, item.masks, item.split, axis, item.unlabelled_value,
                                     item.more_channels)
    return resliced


def _files_by_stem(folder: Path) -> dict[str, Path]:
    """Image files (2D images, NIfTI and DICOM files, DICOM series folders) of a folder by id."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not (path.suffix.lower() in IMAGE_EXTENSIONS or is_volume_file(path)):
            continue
        try:
            path.name.encode("utf-8")
        except UnicodeEncodeError:
            raise MedsegError(folder, f"file name {path.name!r} is not valid UTF-8; rename it") from None
        stem = volume_stem(path) if is_volume_file(path) and not path.is_dir() else path.stem
        if stem in found:
            raise MedsegError(path, f"duplicate id {stem!r} (also {found[stem].name})")
        found[stem] = path
    return found


def _check_inside(root: Path, path: Path) -> Path:
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise MedsegError(path, f"resolves outside the dataset root {root}")
    return path


def read_split_csv(path: Path) -> dict[str, str]:
    """``id -> split`` from an ``id,split`` CSV; unknown splits, unsafe or duplicate ids are errors."""
    splits: dict[str, str] = {}
    rows = read_csv(path)
    if rows and not {"id", "split"} <= set(rows[0]):
        raise MedsegError(path, f"expected columns 'id,split', found {','.join(map(str, rows[0]))!r}")
    for line, row in enumerate(rows, start=2):
        item_id, split = (row.get("id") or "").strip(), (row.get("split") or "").strip()
        if not _SAFE_ID.match(item_id) or item_id in (".", ".."):
            raise MedsegError(path, f"line {line}: invalid id {item_id!r}")
        if split not in SPLITS:
            raise MedsegError(path, f"line {line}: split {split!r} is not one of {', '.join(SPLITS)}")
        if item_id in splits:
            raise MedsegError(path, f"line {line}: id {item_id!r} listed twice")
        splits[item_id] = split
    return splits


def load_folder(root: Path, axis: int | None = None) -> list[Item]:
    """Items of the folder format; split.csv (if present) must name every image exactly once (a volume by its
    case id). An image without a mask is an unlabelled item; a mask's pixels of value 128
    (:data:`~medseg.data.readers.UNLABELLED_VALUE`) are unlabelled."""
    images = _files_by_stem(root / "images")
    if not images:
        raise MedsegError(root / "images", "no images found (expected DIR/images/<id>.png and DIR/masks/<id>.png)")
    masks = _files_by_stem(root / "masks")
    regions = _files_by_stem(root / "regions")
    split_file = root / "split.csv"
    splits = read_split_csv(split_file) if split_file.is_file() else {}
    if splits:
        unknown = sorted(set(splits) - set(images))
        if unknown:
            raise MedsegError(split_file, f"lists ids with no image: {', '.join(unknown[:5])}")
        missing = sorted(set(images) - set(splits))
        if missing:
            raise MedsegError(split_file, f"has no split for: {', '.join(missing[:5])}")
    orphans = sorted(set(masks) - {f"{item_id}{suffix}" for item_id in images for suffix in MASK_SUFFIXES})
    items = []
    for item_id, image in images.items():
        mask = _find_mask(masks, item_id)
        if mask is None and orphans:  # a misnamed mask, most likely: never leave the image unlabelled silently
            tried = ", ".join(f"{item_id}{suffix}.<ext>" for suffix in MASK_SUFFIXES)
            raise MedsegError(image, f"no mask found for id {item_id!r} in {root / 'masks'} (tried {tried}), and "
                                     f"{masks[orphans[0]].name} belongs to no image: rename it, or remove it to "
                                     "leave the image unlabelled")
        masks_of = (_check_inside(root, mask),) if mask else ()
        if is_volume_file(image):
            items += volume_items(item_id, _check_inside(root, image), masks_of, splits.get(item_id), axis,
                                  UNLABELLED_VALUE)
            continue
        items.append(Item(item_id, _check_inside(root, image), masks_of,
                          _check_inside(root, regions[item_id]) if item_id in regions else None,
                          split=splits.get(item_id), unlabelled_value=UNLABELLED_VALUE))
    return items


def _find_mask(masks: dict[str, Path], item_id: str) -> Path | None:
    """The mask of ``item_id`` under any of the common naming conventions (:data:`MASK_SUFFIXES`)."""
    for suffix in MASK_SUFFIXES:
        if f"{item_id}{suffix}" in masks:
            return masks[f"{item_id}{suffix}"]
    return None


def read_dataset_json(root: Path) -> dict:
    """``root/dataset.json`` (MSD and nnU-Net raw) as a mapping; missing or invalid is an error naming it."""
    path = root / "dataset.json"
    if not path.is_file():
        raise MedsegError(path, "missing (not an MSD or nnU-Net raw dataset)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedsegError(path, f"invalid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise MedsegError(path, "expected a JSON object")
    return meta


IGNORE_NAME = "ignore"  # nnU-Net v2's label name for unlabelled pixels: the highest id, not a class


def dataset_json_labels(root: Path) -> tuple[tuple[str, ...], int | None] | None:
    """Class names by id from ``dataset.json``'s ``labels`` (MSD ``{"0": "background"}`` or nnU-Net v2
    ``{"background": 0}``), ids 0..K-1, and the id of nnU-Net v2's ``ignore`` label (unlabelled pixels; it must be
    the highest id, K) or None. None when the dataset has no dataset.json."""
    if not (root / "dataset.json").is_file():
        return None
    labels = read_dataset_json(root).get("labels")
    if not isinstance(labels, dict) or not labels:
        raise MedsegError(root / "dataset.json", "has no 'labels' mapping")
    by_id: dict[int, str] = {}
    for key, value in labels.items():
        name, number = (value, key) if str(key).strip().lstrip("-").isdigit() else (key, value)
        if not isinstance(number, (int, str)) or not str(number).strip().isdigit():
            raise MedsegError(root / "dataset.json", f"label {key!r}: {value!r} is not a class id (region labels "
                                                     "of nnU-Net are not supported)")
        by_id[int(number)] = str(name)
    ignore = next((number for number, name in by_id.items() if name == IGNORE_NAME), None)
    if ignore is not None:
        if ignore != max(by_id):
            raise MedsegError(root / "dataset.json", f"the '{IGNORE_NAME}' label ({ignore}) must have the highest "
                                                     f"id (as in nnU-Net v2), not below {max(by_id)}")
        del by_id[ignore]
    if sorted(by_id) != list(range(len(by_id))) or len(by_id) < 2:
        raise MedsegError(root / "dataset.json", f"label ids {sorted(by_id)} are not 0..K-1 with K >= 2")
    return tuple(by_id[k] for k in range(len(by_id))), ignore


CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")  # nnU-Net raw: <case>_0000, <case>_0001, ...


def channel_files(files: dict[str, Path], count: int, source: str) -> dict[str, tuple[Path, ...]]:
    """nnU-Net raw's channel files (``<case>_XXXX``) grouped by case, ``count`` each in channel order; a missing or
    an unexpected channel is a one-line error naming the file and the ``source`` of the count."""
    cases: dict[str, dict[int, Path]] = {}
    for stem, path in files.items():
        match = CHANNEL_FILE.match(stem)
        if match is None:
            raise MedsegError(path, "expected file names {case}_0000.<ext> (one file per channel: _0000, _0001, ...)")
        cases.setdefault(match["case"], {})[int(match["channel"])] = path
    grouped = {}
    for case, found in cases.items():
        missing = [k for k in range(count) if k not in found]
        if missing or len(found) != count:
            first = next(iter(found.values()))
            problem = (f"no channel file {case}_{missing[0]:04d}.<ext>" if missing else
                       f"channel files {sorted(found)} beyond the {count}")
            raise MedsegError(first, f"{problem} ({source})")
        grouped[case] = tuple(found[k] for k in range(count))
    return grouped


def _load_decathlon(root: Path, per_channel: bool, axis: int | None) -> list[Item]:
    """MSD (channels in an image's 4th axis) and nnU-Net raw (``per_channel``: one file per channel,
    ``<case>_0000``, ``<case>_0001``, ..., as many as dataset.json's ``channel_names``):
    ``imagesTr/<case>...`` with ``labelsTr/<case>.<ext>``, and labelled test cases in ``imagesTs`` +
    ``labelsTs``. An ``imagesTr`` case without a label is unlabelled (listed, never trained on), unless a label
    there names no case (a misnamed label, most likely: a one-line error); unlabelled ``imagesTs`` files are for
    `medseg predict`, not listed. A label's pixels of the ``ignore`` label (nnU-Net v2) are unlabelled."""
    meta = read_dataset_json(root)
    ignore = dataset_json_labels(root)[1]
    count = len(meta.get("channel_names", meta.get("modality", {"0": ""})))
    items = []
    for folder, label_folder, split in (("imagesTr", "labelsTr", None), ("imagesTs", "labelsTs", "test")):
        labels = _files_by_stem(root / label_folder)
        files = _files_by_stem(root / folder)
        cases = (channel_files(files, count, f"dataset.json names {count} channel(s)") if per_channel
                 else {stem: (path,) for stem, path in files.items()})
        orphans = sorted(set(labels) - set(cases))
        for case, images in cases.items():
            label = labels.get(case)
            if label is None and (split is not None or orphans):
                if split is None:
                    raise MedsegError(images[0], f"no label {case}.<ext> in {root / label_folder}, and "
                                                 f"{labels[orphans[0]].name} belongs to no case: rename it, or "
                                                 "remove it to leave the case unlabelled")
                continue
            items += volume_items(case, _check_inside(root, images[0]),
                                  () if label is None else (_check_inside(root, label),), split, axis, ignore,
                                  tuple(_check_inside(root, image) for image in images[1:]))
    if not items:
        raise MedsegError(root / "imagesTr", "no images found")
    return items


def load_nnunet(root: Path, axis: int | None = None) -> list[Item]:
    """nnU-Net raw: ``imagesTr/{case}_0000.<ext>`` (PNG, NIfTI, ...; ``_0001``, ... for further channels),
    ``labelsTr/{case}.<ext>``, ``dataset.json``."""
    return _load_decathlon(root, True, axis)


def load_msd(root: Path, axis: int | None = None) -> list[Item]:
    """The Medical Segmentation Decathlon: ``imagesTr/{case}.nii.gz`` (channels in the 4th axis),
    ``labelsTr/{case}.nii.gz``, ``dataset.json`` with ``labels`` and ``modality``."""
    return _load_decathlon(root, False, axis)


def load_tiff_stack(root: Path) -> list[Item]:
    """A 3D stack treated as 2D slices: ``*volume*.tif`` with ``*labels*.tif`` (ISBI 2012), or a single pair of
    ``images.tif``/``masks.tif``. Slice ids are ``<stem>_<zzz>``."""
    tiffs = sorted(p for p in root.iterdir() if p.suffix.lower() in (".tif", ".tiff")) if root.is_dir() else []
    volumes = [p for p in tiffs if "label" not in p.stem.lower() and "mask" not in p.stem.lower()]
    if not volumes:
        raise MedsegError(root, "no TIFF stack found (expected e.g. train-volume.tif and train-labels.tif)")
    items = []
    reader = Reader()
    for volume in volumes:
        key = volume.stem.lower().replace("volume", "").replace("images", "").replace("image", "")
        labels = [p for p in tiffs if p not in volumes and
                  p.stem.lower().replace("labels", "").replace("label", "").replace("masks", "")
                  .replace("mask", "") == key]
        n_pages = reader.pages(volume)
        if labels and (n_labels := reader.pages(labels[0])) != n_pages:
            raise MedsegError(labels[0], f"has {n_labels} pages, {volume.name} has {n_pages}")
        for z in range(n_pages):
            items.append(Item(f"{volume.stem}_{z:03d}", volume, tuple(labels[:1]), page=z))
    reader.close()
    return items


def load_drive(root: Path) -> list[Item]:
    """DRIVE: ``{training,test}/images/NN_{training,test}.tif``, ``1st_manual/NN_manual1.gif``, field of view in
    ``mask/NN_{training,test}_mask.gif`` (used as the region)."""
    items = []
    for part, split in (("training", "train"), ("test", "test")):
        for stem, image in _files_by_stem(root / part / "images").items():
            number = stem.split("_")[0]
            manual = _files_by_stem(root / part / "1st_manual").get(f"{number}_manual1")
            fov = _files_by_stem(root / part / "mask").get(f"{stem}_mask")
            if split == "train" and manual is None:
                raise MedsegError(image, f"no manual segmentation {number}_manual1.gif")
            items.append(Item(stem, image, (manual,) if manual else (), fov, split=split))
    if not items:
        raise MedsegError(root, "no DRIVE images found (expected training/images/*.tif)")
    return items


def load_isic(root: Path) -> list[Item]:
    """ISIC 2018 Task 1: ``ISIC_xxxxxxx.jpg`` anywhere below root, masks ``ISIC_xxxxxxx_segmentation.png``."""
    images = {p.stem: p for p in sorted(root.rglob("ISIC_*.jpg"))}
    masks = {p.stem[: -len("_segmentation")]: p for p in sorted(root.rglob("ISIC_*_segmentation.png"))}
    if not images:
        raise MedsegError(root, "no ISIC_*.jpg images found")
    return [Item(i, path, (masks[i],) if i in masks else ()) for i, path in images.items()]


def load_busi(root: Path) -> list[Item]:
    """BUSI originals: ``<class>/<class> (N).png`` with one or more ``_mask``, ``_mask_k`` files, OR-merged.
    Ids are ``<class>_NNN``."""
    items = []
    pattern = re.compile(r"^(?P<cls>[a-z]+) \((?P<n>\d+)\)$")
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for path in sorted(folder.glob("*.png")):
            match = pattern.match(path.stem)
            if not match:
                continue
            masks = tuple(sorted(folder.glob(f"{glob_escape(path.stem)}_mask*.png")))
            if not masks:
                raise MedsegError(path, "no mask file (<name>_mask.png)")
            items.append(Item(f"{match['cls']}_{int(match['n']):03d}", path, masks))
    if not items:
        raise MedsegError(root, "no BUSI images found (expected <class>/<class> (N).png)")
    return items


def glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


ADAPTERS: dict[str, Callable[..., list[Item]]] = {  # keys: the formats of config.DatasetFormat
    "folder": load_folder,
    "msd": load_msd,
    "nnunet": load_nnunet,
    "tiff-stack": load_tiff_stack,
    "drive": load_drive,
    "isic": load_isic,
    "busi": load_busi,
}
SLICED = ("folder", "msd", "nnunet")  # adapters that may list volumes, sliced along a chosen axis


def detect_format(root: Path) -> str:
    """Guess the layout of ``root``."""
    if not root.is_dir():
        raise MedsegError(root, "dataset folder not found")
    if (root / "images").is_dir():
        return "folder"
    if (root / "dataset.json").is_file():
        stems = _files_by_stem(root / "imagesTr")
        nnunet = stems and all(CHANNEL_FILE.match(stem) for stem in stems) and any(s.endswith("_0000") for s in stems)
        return "nnunet" if nnunet else "msd"
    if (root / "training" / "1st_manual").is_dir():
        return "drive"
    if root.is_dir() and any(p.suffix.lower() in (".tif", ".tiff") for p in root.iterdir()):
        return "tiff-stack"
    if root.is_dir() and any(root.rglob("ISIC_*.jpg")):
        return "isic"
    if (root / "benign").is_dir() or (root / "malignant").is_dir():
        return "busi"
    raise MedsegError(root, "unrecognised dataset layout; expected DIR/images + DIR/masks (or give --format)")


def load_items(root: str | Path, fmt: str = "auto", axis: int | None = None) -> list[Item]:
    """All items of a dataset in any supported layout; volumes as their slices along ``axis`` (None: each
    volume's coarsest axis)."""
    root = Path(root)
    fmt = detect_format(root) if fmt == "auto" else fmt
    if not root.is_dir():
        raise MedsegError(root, "dataset folder not found")
    if fmt not in ADAPTERS:
        raise MedsegError("data.format", f"unknown format {fmt!r}; choose auto or one of {', '.join(ADAPTERS)}"
                                         f"{did_you_mean(fmt, ADAPTERS)}")
    items = ADAPTERS[fmt](root, axis) if fmt in SLICED else ADAPTERS[fmt](root)
    duplicates = [i for i, n in Counter(item.id for item in items).items() if n > 1]
    if duplicates:
        raise MedsegError(root, f"duplicate ids: {', '.join(duplicates[:5])}")
    return items


@dataclass(frozen=True)
class Splits:
    """The items of each split. ``val`` is empty when training on every labelled image (fold ``"all"``)."""

    train: list[Item]
    val: list[Item]
    test: list[Item]

    def by_name(self, name: str) -> list[Item]:
        if name not in SPLITS:
            raise MedsegError("--split", f"unknown split {name!r}; choose {', '.join(SPLITS)}")
        return getattr(self, name)


def split_items(
    items: Iterable[Item],
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    fold: int | str | None = None,
    folds: int = 5,
) -> Splits:
    """Train/val/test lists of the labelled items (unlabelled ones belong to none). The source's own split
    (split.csv, an adapter's) is kept; a split it lacks is carved from its training items (a volume's slices as
    one), seeded: first ``test_fraction`` for test, then
    ``val_fraction`` (or fold ``fold`` of
    ``folds``, the same partition for every fold) for val; fold ``"all"`` keeps no validation images. An id is
    never on two sides."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        if item.labelled:  # an unlabelled image belongs to no split
            groups.setdefault(item.group, []).append(item)
    rng = np.random.default_rng(seed)
    split_of = {name: members[0].split for name, members in groups.items()}
    pool = [name for name in groups if split_of[name] in (None, "train")]
    test = [name for name in groups if split_of[name] == "test"]
    val = [name for name in groups if split_of[name] == "val"]
    if not test and test_fraction > 0 and len(pool) > 1:
        order = rng.permutation(len(pool))
        n_test = min(max(1, round(test_fraction * len(pool))), len(pool) - 1)
        test = [pool[i] for i in sorted(order[:n_test])]
        pool = [pool[i] for i in sorted(order[n_test:])]
    if fold == "all":
        pool, val = pool + val, []
    elif fold is not None or not val:
        pool = pool + val
        order = rng.permutation(len(pool))
        if fold is not None:
            if not (isinstance(fold, int) and 0 <= fold < folds):
                raise MedsegError("data.fold", f"fold {fold} is outside 0..{folds - 1} (or 'all')")
            val_idx = set(np.array_split(order, folds)[fold].tolist())
        else:
            n_val = 0
            if val_fraction > 0 and len(pool) > 1:
                n_val = min(max(1, round(val_fraction * len(pool))), len(pool) - 1)
            val_idx = set(order[:n_val].tolist())
        val = [name for i, name in enumerate(pool) if i in val_idx]
        pool = [name for i, name in enumerate(pool) if i not in val_idx]

    def members(names: list[str]) -> list[Item]:
        return [item for name in names for item in groups[name]]

    result = Splits(members(pool), members(val), members(test))
    seen: dict[str, str] = {}
    for split in SPLITS:
        for item in result.by_name(split):
            if item.id in seen:
                raise MedsegError(item.image, f"id {item.id!r} is in both {seen[item.id]} and {split}")
            seen[item.id] = split
    return result


MAX_AUTO_CLASSES = 32  # masks holding 0..K-1 with 2 < K <= this are K classes; anything else stays binary


@dataclass(frozen=True)
class Classes:
    """A task's classes (names by id, background first) and where they came from."""

    names: tuple[str, ...]
    source: str

    @property
    def count(self) -> int:
        return len(self.names)


def find_classes(root: str | Path, items: Iterable[Item]) -> Classes:
    """The classes of a dataset: ``dataset.json``'s labels where there is one; else masks holding only 0..K-1
    with K > 2 are K classes (every mask read once); 0/1 and 0/255 masks are binary."""
    labels = dataset_json_labels(Path(root))
    if labels is not None:
        return Classes(labels[0], "dataset.json")
    unlabelled = {path: item.unlabelled_value for item in items for path in item.masks}
    values: dict[Path, set[int]] = {}
    with Reader() as reader:
        for path, value in unlabelled.items():
            values[path] = set(reader.mask_values(path).tolist()) - {value}
        union = set().union(*values.values())
        top = max(union, default=1)
        if top + 1 > 2 and union <= set(range(top + 1)) and top < MAX_AUTO_CLASSES:
            return Classes(default_class_names(top + 1), f"masks hold the values 0..{top}")
        for path, found in values.items():  # binary: a mask with other values is an error, before any training
            if not (found <= {0, 1} or found <= {0, 255}):
                reader.check_mask(path, 2, unlabelled[path])
    return Classes(default_class_names(2), "binary masks")


@dataclass
class DatasetReport:
    """What `medseg data check` prints."""

    root: str
    format: str
    n_items: int
    splits: dict[str, int]
    sizes: dict[str, int]
    channels: dict[int, int]
    mask_values: list[int]
    foreground_fraction: float  # of the labelled pixels
    classes: Classes
    n_cases: int  # volumes (each listed as its slices); 0 for 2D images
    labels: dict[str, int]  # images (a volume's slices) by label: dense, partial (pixels left unlabelled), none
    labelled_fraction: float  # labelled pixels of the images that have a mask
    unlabelled: list[str]  # the ids of the images without a mask


def check_dataset(root: str | Path, fmt: str = "auto", n_classes: int | None = None,
                  channels: int | None = None) -> DatasetReport:
    """Decode every item of a dataset and summarise it (classes from dataset.json or the masks unless
    ``n_classes`` is given); the first broken file raises a MedsegError."""
    root = Path(root)
    fmt = detect_format(root) if fmt == "auto" else fmt
    items = load_items(root, fmt)
    classes = find_classes(root, items)
    if n_classes is not None and n_classes != classes.count:
        classes = Classes(default_class_names(n_classes), "--n-classes")
    n_classes = classes.count
    sizes: Counter[str] = Counter()
    channel_counts: Counter[int] = Counter()
    values: set[int] = set()
    labels: Counter[str] = Counter()
    foreground = labelled = total = 0
    reader = Reader()
    for item in items:
        sample = load_sample(item, channels, n_classes, reader)
        sizes[f"{sample.image.shape[1]}x{sample.image.shape[0]}"] += 1
        channel_counts[sample.image.shape[2]] += 1
        labels[label_kind(sample)] += 1
        if sample.mask is not None:
            known = sample.mask if sample.labelled is None else sample.mask[sample.labelled]
            values.update(np.unique(known).tolist())
            foreground += int((known > 0).sum())
            labelled += known.size
            total += sample.mask.size
    reader.close()
    splits = Counter(item.split or "unassigned" for item in items if item.labelled)
    return DatasetReport(str(root), fmt, len(items), dict(splits), dict(sizes.most_common()), dict(channel_counts),
                         sorted(values), foreground / labelled if labelled else 0.0, classes,
                         len({item.case for item in items if item.case}),
                         {kind: labels[kind] for kind in LABEL_KINDS}, labelled / total if total else 0.0,
                         sorted({item.group for item in items if not item.labelled}))


LABEL_KINDS = ("dense", "partial", "none")


def label_kind(sample: Sample) -> str:
    """How a sample is labelled: ``dense`` (every pixel), ``partial`` (some pixels unlabelled) or ``none``."""
    return "none" if sample.mask is None else "partial" if sample.partial else "dense"


def input_channels(config: Config, splits: Splits, known: int | None = None) -> int:
    """``data.channels``, else ``known`` (the fingerprint's count), else the first training image's channel count
    (every image is converted to it)."""
    if config.data.channels:
        return config.data.channels
    if known is not None:
        return known
    return load_sample(splits.train[0], None, config.data.n_classes).image.shape[2]


def resolve_classes(config: Config, classes: Classes) -> Config:
    """``config`` with ``data.n_classes`` and ``data.class_names`` filled in from the dataset's ``classes``
    (dataset.json, else the mask values) where the config leaves them open."""
    data = config.data
    if data.n_classes is not None and (data.class_names is not None or data.n_classes == 2):
        return config
    if data.n_classes is not None and data.n_classes != classes.count:
        return config
    resolved = config.model_copy(deep=True)
    resolved.data.n_classes = classes.count
    resolved.data.class_names = list(classes.names)
    get_logger().info("%d classes (%s): %s", classes.count, classes.source, ", ".join(classes.names))
    return resolved


def with_classes(config: Config, items: list[Item]) -> tuple[Config, Classes | None]:
    """``config`` with the classes of the dataset's ``items`` filled in where it leaves them open (and the classes
    found, or None where the config names them)."""
    data = config.data
    if data.n_classes is not None and (data.class_names is not None or data.n_classes == 2):
        return config, None
    classes = find_classes(data.root, items)
    return resolve_classes(config, classes), classes


def dataset_items(config: Config) -> tuple[Config, list[Item], Classes | None]:
    """The items of ``data.root`` (listed once), and ``config`` with their classes (see :func:`with_classes`)."""
    data = config.data
    if not data.root:
        raise MedsegError("data.root", "no dataset given (--data DIR)")
    items = load_items(data.root, data.format, data.slice_axis)
    unlabelled = sorted({item.group for item in items if not item.labelled})
    if len(unlabelled) == len({item.group for item in items}):
        expected = ("labelsTr/<case>.<ext> beside imagesTr/<case>" if (Path(data.root) / "imagesTr").is_dir()
                    else "DIR/masks/<id>.png beside DIR/images/<id>.png")
        raise MedsegError(data.root, f"no image has a mask (expected {expected})")
    if unlabelled:
        get_logger().info("%d image(s) have no mask (e.g. %s): listed as unlabelled, never trained on",
                          len(unlabelled), ", ".join(unlabelled[:3]))
    config, classes = with_classes(config, items)
    return config, items, classes


def channel_modalities(root: str | Path, items: Sequence[Item]) -> tuple[str, ...]:
    """Each channel's modality: dataset.json's ``channel_names`` (or the MSD's ``modality``) in channel order, else
    a DICOM image's ``Modality`` (for its channels), else none known (empty)."""
    path = Path(root) / "dataset.json"
    if path.is_file():
        meta = read_dataset_json(Path(root))
        names = meta.get("channel_names", meta.get("modality"))
        if isinstance(names, dict):
            return tuple(str(names[key]) for key in sorted(names, key=lambda k: int(k) if str(k).isdigit() else 0))
    first = next((item for item in items if item.labelled and is_volume_file(item.image)), None)
    if first is None or is_nifti(first.image):
        return ()
    from medseg.data.dicom import dicom_modality

    return (dicom_modality(first.image),) * volume_info(first.image).channels


def default_class_names(n_classes: int) -> tuple[str, ...]:
    return ("background", "foreground") if n_classes == 2 else ("background",) + tuple(
        f"class_{k}" for k in range(1, n_classes))


def convert(src: str | Path, fmt: str, out: str | Path, n_classes: int = 2) -> int:
    """Write any supported layout as the folder format (PNG images/masks/regions + split.csv); returns the count."""
    out = Path(out)
    items = load_items(src, fmt)
    if any(is_volume_file(item.image) for item in items):
        raise MedsegError(src, "holds NIfTI or DICOM images: medseg reads them directly (PNG would lose their "
                               "intensities, spacing and affine)")
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    reader = Reader()
    for item in items:
        sample = load_sample(item, None, n_classes, reader)
        image = _to_png_pixels(sample.image)
        write_array(out / "images" / f"{item.id}.png", image[..., 0] if image.shape[2] == 1 else image)
        if sample.mask is not None:
            write_mask(out / "masks" / f"{item.id}.png", sample.mask, n_classes)
        if sample.region is not None:
            write_mask(out / "regions" / f"{item.id}.png", sample.region.astype(np.int64), 2)
    reader.close()
    if any(item.split for item in items):
        atomic_write_csv(out / "split.csv", [{"id": item.id, "split": item.split or "train"} for item in items])
    return len(items)


def _to_png_pixels(image: np.ndarray) -> np.ndarray:
    """Reader-scale [0, 1] pixels as 8-bit when that is lossless (8-bit sources), else 16-bit."""
    as_8_bit = image * 255
    if np.abs(as_8_bit - np.rint(as_8_bit)).max(initial=0) < 1e-3:
        return np.clip(np.rint(as_8_bit), 0, 255).astype(np.uint8)
    return np.clip(np.rint(image * 65535), 0, 65535).astype(np.uint16)
