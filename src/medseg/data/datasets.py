"""Datasets: items found on disk (folder format and adapters for common layouts), splits, and decoded samples.

Folder format (the default, also `../shared/data/*`)::

    DIR/images/<id>.<ext>    DIR/masks/<id>.<ext>    [DIR/regions/<id>.<ext>]    [DIR/split.csv: id,split]

Adapters read the layouts people download (nnU-Net raw, TIFF stacks, DRIVE, ISIC 2018, BUSI originals) into the
same :class:`Item` list; :func:`convert` writes any of them out in the folder format.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from medseg.data.readers import IMAGE_EXTENSIONS, Reader, write_array, write_mask
from medseg.errors import MedsegError, did_you_mean
from medseg.files import atomic_write_csv, read_csv

SPLITS = ("train", "val", "test")
MASK_SUFFIXES = ("", "_mask", "_segmentation", "_label")  # <id>.png, <id>_mask.png (BUSI, Kaggle), ISIC, ...
_SAFE_ID = re.compile(r"^[^/\\\x00]+$")


@dataclass(frozen=True)
class Item:
    """One 2D sample on disk. ``masks`` (OR-merged if several) may be empty for unlabelled images; ``frame``
    selects a page of a TIFF stack; ``split`` is the source's own split if it has one."""

    id: str
    image: Path
    masks: tuple[Path, ...] = ()
    region: Path | None = None
    frame: int | None = None
    split: str | None = None


@dataclass
class Sample:
    """A decoded sample: ``image`` float32 ``H x W x C`` in [0, 1], ``mask`` int64 ``H x W`` class ids (or None),
    ``region`` bool ``H x W`` (or None = everywhere)."""

    id: str
    image: np.ndarray
    mask: np.ndarray | None
    region: np.ndarray | None = None


def load_sample(item: Item, channels: int | None, n_classes: int, reader: Reader | None = None) -> Sample:
    """Decode an item, checking that image, mask(s) and region agree in size. Pass the dataset's ``reader`` to keep
    its TIFF stacks open between items."""
    if reader is None:
        with Reader() as own:
            return load_sample(item, channels, n_classes, own)
    image = reader.image(item.image, channels, item.frame)
    mask = None
    for path in item.masks:
        part = reader.mask(path, n_classes, item.frame)
        if part.shape != image.shape[:2]:
            raise MedsegError(path, f"mask size {part.shape[1]}x{part.shape[0]} does not match image size "
                                    f"{image.shape[1]}x{image.shape[0]} ({item.image.name})")
        mask = part if mask is None else np.maximum(mask, part)
    region = None
    if item.region is not None:
        region = reader.mask(item.region, 2) > 0
        if region.shape != image.shape[:2]:
            raise MedsegError(item.region, f"region size {region.shape[::-1]} does not match image size "
                                           f"{image.shape[1::-1]}")
    return Sample(item.id, image, mask, region)


def _files_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
            try:
                path.name.encode("utf-8")
            except UnicodeEncodeError:
                raise MedsegError(folder, f"file name {path.name!r} is not valid UTF-8; rename it") from None
            if path.stem in found:
                raise MedsegError(path, f"duplicate id {path.stem!r} (also {found[path.stem].name})")
            found[path.stem] = path
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


def load_folder(root: Path) -> list[Item]:
    """Items of the folder format; split.csv (if present) must name every image exactly once."""
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
    items = []
    for item_id, image in images.items():
        mask = _find_mask(masks, item_id)
        if mask is None and masks:
            tried = ", ".join(f"{item_id}{suffix}.<ext>" for suffix in MASK_SUFFIXES)
            raise MedsegError(image, f"no mask found for id {item_id!r} in {root / 'masks'} (tried {tried})")
        items.append(
            Item(
                item_id,
                _check_inside(root, image),
                (_check_inside(root, mask),) if mask else (),
                _check_inside(root, regions[item_id]) if item_id in regions else None,
                split=splits.get(item_id),
            )
        )
    return items


def _find_mask(masks: dict[str, Path], item_id: str) -> Path | None:
    """The mask of ``item_id`` under any of the common naming conventions (:data:`MASK_SUFFIXES`)."""
    for suffix in MASK_SUFFIXES:
        if f"{item_id}{suffix}" in masks:
            return masks[f"{item_id}{suffix}"]
    return None


def load_nnunet(root: Path) -> list[Item]:
    """nnU-Net raw: ``imagesTr/{case}_0000.png``, ``labelsTr/{case}.png``, ``imagesTs/``, ``dataset.json``."""
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise MedsegError(meta_path, "missing (not an nnU-Net raw dataset)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedsegError(meta_path, f"invalid JSON ({exc})") from None
    if len(meta.get("channel_names", {"0": ""})) != 1:
        raise MedsegError(meta_path, "several channel files per case are not supported; merge them into one image")
    items = []
    for folder, split in (("imagesTr", None), ("imagesTs", "test")):
        labels = _files_by_stem(root / "labelsTr") if split is None else _files_by_stem(root / "labelsTs")
        for stem, image in _files_by_stem(root / folder).items():
            if not stem.endswith("_0000"):
                raise MedsegError(image, "expected file names {case}_0000.<ext>")
            case = stem[: -len("_0000")]
            label = labels.get(case)
            if split is None and label is None:
                raise MedsegError(image, f"no label {case}.<ext> in {root / 'labelsTr'}")
            items.append(Item(case, _check_inside(root, image), (_check_inside(root, label),) if label else (),
                              split=split))
    if not items:
        raise MedsegError(root / "imagesTr", "no images found")
    return items


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
        n_frames = reader.frames(volume)
        if labels and (n_labels := reader.frames(labels[0])) != n_frames:
            raise MedsegError(labels[0], f"has {n_labels} frames, {volume.name} has {n_frames}")
        for z in range(n_frames):
            items.append(Item(f"{volume.stem}_{z:03d}", volume, tuple(labels[:1]), frame=z))
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


ADAPTERS: dict[str, Callable[[Path], list[Item]]] = {  # keys: the formats of config.DatasetFormat
    "folder": load_folder,
    "nnunet": load_nnunet,
    "tiff-stack": load_tiff_stack,
    "drive": load_drive,
    "isic": load_isic,
    "busi": load_busi,
}


def detect_format(root: Path) -> str:
    """Guess the layout of ``root``."""
    if not root.is_dir():
        raise MedsegError(root, "dataset folder not found")
    if (root / "images").is_dir():
        return "folder"
    if (root / "dataset.json").is_file():
        return "nnunet"
    if (root / "training" / "1st_manual").is_dir():
        return "drive"
    if root.is_dir() and any(p.suffix.lower() in (".tif", ".tiff") for p in root.iterdir()):
        return "tiff-stack"
    if root.is_dir() and any(root.rglob("ISIC_*.jpg")):
        return "isic"
    if (root / "benign").is_dir() or (root / "malignant").is_dir():
        return "busi"
    raise MedsegError(root, "unrecognised dataset layout; expected DIR/images + DIR/masks (or give --format)")


def load_items(root: str | Path, fmt: str = "auto") -> list[Item]:
    """All items of a dataset in any supported layout."""
    root = Path(root)
    fmt = detect_format(root) if fmt == "auto" else fmt
    if not root.is_dir():
        raise MedsegError(root, "dataset folder not found")
    if fmt not in ADAPTERS:
        raise MedsegError("data.format", f"unknown format {fmt!r}; choose auto or one of {', '.join(ADAPTERS)}"
                                         f"{did_you_mean(fmt, ADAPTERS)}")
    items = ADAPTERS[fmt](root)
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
    """Train/val/test lists. The source's own split (split.csv, an adapter's) is kept; a split it lacks is carved
    from its training items, seeded: first ``test_fraction`` for test, then ``val_fraction`` (or fold ``fold`` of
    ``folds``, the same partition for every fold) for val; fold ``"all"`` keeps no validation images. An id is
    never on two sides."""
    items = list(items)
    rng = np.random.default_rng(seed)
    pool = [item for item in items if item.split in (None, "train")]
    test = [item for item in items if item.split == "test"]
    val = [item for item in items if item.split == "val"]
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
        val = [item for i, item in enumerate(pool) if i in val_idx]
        pool = [item for i, item in enumerate(pool) if i not in val_idx]
    result = Splits(pool, val, test)
    seen: dict[str, str] = {}
    for split in SPLITS:
        for item in result.by_name(split):
            if item.id in seen:
                raise MedsegError(item.image, f"id {item.id!r} is in both {seen[item.id]} and {split}")
            seen[item.id] = split
    return result


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
    foreground_fraction: float


def check_dataset(root: str | Path, fmt: str = "auto", n_classes: int = 2,
                  channels: int | None = None) -> DatasetReport:
    """Decode every item of a dataset and summarise it; the first broken file raises a MedsegError."""
    root = Path(root)
    fmt = detect_format(root) if fmt == "auto" else fmt
    items = load_items(root, fmt)
    sizes: Counter[str] = Counter()
    channel_counts: Counter[int] = Counter()
    values: set[int] = set()
    foreground = total = 0
    reader = Reader()
    for item in items:
        sample = load_sample(item, channels, n_classes, reader)
        sizes[f"{sample.image.shape[1]}x{sample.image.shape[0]}"] += 1
        channel_counts[sample.image.shape[2]] += 1
        if sample.mask is not None:
            values.update(np.unique(sample.mask).tolist())
            foreground += int((sample.mask > 0).sum())
            total += sample.mask.size
    reader.close()
    splits = Counter(item.split or "unassigned" for item in items)
    return DatasetReport(str(root), fmt, len(items), dict(splits), dict(sizes.most_common()), dict(channel_counts),
                         sorted(values), foreground / total if total else 0.0)


def convert(src: str | Path, fmt: str, out: str | Path, n_classes: int = 2) -> int:
    """Write any supported layout as the folder format (PNG images/masks/regions + split.csv); returns the count."""
    out = Path(out)
    items = load_items(src, fmt)
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
