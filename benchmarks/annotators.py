"""The simulated annotators of ``labelling.py``: a shared dataset's training pool and test split as an annotator
meets them, full masks, and scribbles in two styles, written as the folder format stores labels."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from accuracy import NIFTI, SHARED, Dataset, labelled_cases, test_ids

STROKE_TILE = 24  # strokes are cut into pieces by a grid of this many pixels, and pieces drawn at random
BRUSH = 5  # a stroke's width, px
RING = 3  # background strokes also run this many brush widths from the objects


# -- the data: a dataset's images, its test split, and its masks as an annotator would give them ---------------------

@dataclass(frozen=True)
class Source:
    """A shared dataset as the benchmark uses it: its training pool and test ids, and where each file is."""

    dataset: Dataset
    pool: tuple[str, ...]
    test: tuple[str, ...]

    @classmethod
    def of(cls, dataset: Dataset) -> "Source":
        if dataset.volumes:
            cases = labelled_cases(dataset)
            held = set(test_ids(dataset))
            return cls(dataset, tuple(c for c in cases if c not in held), tuple(sorted(held)))
        root = SHARED / dataset.name
        ids = sorted(p.stem for p in (root / "images").iterdir() if not p.name.startswith("."))
        if dataset.test_ids is not None:
            held = set(dataset.test_ids)
        else:
            rows = [line.split(",") for line in (root / "split.csv").read_text().splitlines()[1:] if line.strip()]
            held = {i for i, split in rows if split.strip() == "test"}
        return cls(dataset, tuple(i for i in ids if i not in held), tuple(i for i in ids if i in held))

    def image(self, item: str) -> Path:
        root = SHARED / self.dataset.name
        return root / "imagesTr" / f"{item}{NIFTI}" if self.dataset.volumes else root / "images" / f"{item}.png"

    def mask(self, item: str) -> Path:
        root = SHARED / self.dataset.name
        return root / "labelsTr" / f"{item}{NIFTI}" if self.dataset.volumes else root / "masks" / f"{item}.png"

    def region(self, item: str) -> Path | None:
        path = SHARED / self.dataset.name / "regions" / f"{item}.png"
        return path if path.is_file() else None

    def suffix(self) -> str:
        return NIFTI if self.dataset.volumes else ".png"


def make_folder(source: Source, folder: Path) -> Path:
    """A folder-format copy of the images (regions, test masks) with split.csv: the pool unlabelled, the test
    split labelled."""
    if (folder / "split.csv").is_file():
        return folder
    for item in source.pool + source.test:
        target = folder / "images" / f"{item}{source.suffix()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source.image(item), target)
        if source.region(item) is not None:
            (folder / "regions").mkdir(exist_ok=True)
            shutil.copy(source.region(item), folder / "regions" / f"{item}.png")
    for item in source.test:
        target = folder / "masks" / f"{item}{source.suffix()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source.mask(item), target)
    rows = [f"{i},train" for i in source.pool] + [f"{i},test" for i in source.test]
    (folder / "split.csv").write_text("id,split\n" + "\n".join(rows) + "\n")
    return folder


@dataclass(frozen=True)
class Annotation:
    """An annotator's labels of one image: its class ids per slice (a 2D image has one; a volume's are along its
    last axis), ``UNLABELLED`` where nothing is labelled, and the labelled share of its pixels (in its region)."""

    planes: tuple[np.ndarray, ...]
    share: float

    @property
    def dense(self) -> bool:
        return self.share >= 1.0


def truth(source: Source, item: str) -> tuple[list[np.ndarray], np.ndarray | None]:
    """``item``'s full mask as class-id planes, and its region (field of view) if it has one."""
    from medseg.data.readers import read_mask

    if source.dataset.volumes:
        import nibabel as nib

        labels = np.asarray(nib.load(str(source.mask(item))).dataobj).astype(np.int64)
        return [labels[..., z] for z in range(labels.shape[2])], None
    region = read_mask(source.region(item)) > 0 if source.region(item) is not None else None
    return [read_mask(source.mask(item), source.dataset.n_classes)], region


def dense(source: Source, item: str) -> Annotation:
    """An annotator who draws everything: the full mask."""
    return Annotation(tuple(truth(source, item)[0]), 1.0)


def scribble(source: Source, item: str, share: float, rng: np.random.Generator, style: str) -> Annotation:
    """Strokes (:func:`strokes_of`'s ``style``) on ``item``'s mask (every slice of a volume) covering at most
    ``share`` of its pixels inside the region, the rest unlabelled."""
    from medseg.data.readers import UNLABELLED

    planes, region = truth(source, item)
    strokes = [strokes_of(plane, region, share, rng, style) for plane in planes]
    inside = region.sum() if region is not None else planes[0].size
    return Annotation(tuple(np.where(s, p, UNLABELLED) for s, p in zip(strokes, planes)),
                      float(sum(s.sum() for s in strokes) / (inside * len(planes))))


def write_annotation(source: Source, folder: Path, item: str, annotation: Annotation) -> None:
    """An annotation as the folder format stores it: a PNG mask, or a NIfTI label volume aligned with the image
    (128 where nothing is labelled)."""
    from medseg.data.readers import UNLABELLED, UNLABELLED_VALUE, write_mask

    target = folder / "masks" / f"{item}{source.suffix()}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not source.dataset.volumes:
        write_mask(target, annotation.planes[0], source.dataset.n_classes)
        return
    import nibabel as nib

    image = nib.load(str(source.mask(item)))
    stored = np.where(np.stack(annotation.planes, axis=2) == UNLABELLED, UNLABELLED_VALUE,
                      np.stack(annotation.planes, axis=2)).astype(np.uint8)
    header = image.header.copy()
    header.set_data_dtype(np.uint8)
    nib.save(nib.Nifti1Image(stored, image.affine, header), str(target))


def strokes_of(labels: np.ndarray, region: np.ndarray | None, share: float, rng: np.random.Generator,
               style: str = "border") -> np.ndarray:
    """Scribbles on an ``H x W`` label map: strokes :data:`BRUSH` px wide, cut into pieces by a grid and drawn at
    random while they fit in ``share`` of the region's pixels, half for the objects and half for the background
    (all for the background of an image without objects). ``skeleton``: along each class's skeleton, and in the
    background along its skeleton and around the objects (:data:`RING` brushes from them). ``border`` (after
    Gotkowski et al. 2024, "Embarrassingly simple scribble supervision"): each class's skeleton and a stroke along
    the inside of its border, so the background's runs just outside the objects."""
    inside = region if region is not None else np.ones(labels.shape, bool)
    budget = share * inside.sum()
    classes = [c for c in np.unique(labels[inside]) if c != 0]
    chosen = np.zeros(labels.shape, bool)
    shares = {0: 0.5 if classes else 1.0, **{c: 0.5 / len(classes) for c in classes}}
    for cls, part in shares.items():
        own = (labels == cls) & inside
        if style == "border":
            depth = ndimage.distance_transform_edt(np.pad(own, 1))[1:-1, 1:-1]
            line = skeleton(own) | (np.rint(depth) == BRUSH // 2 + 1)
        elif cls == 0:
            away = ndimage.distance_transform_edt(labels == 0)
            line = skeleton(ndimage.binary_erosion(own, iterations=BRUSH)) | (np.rint(away) == RING * BRUSH)
        else:
            line = skeleton(own)
        chosen |= _pieces(line, own, part * budget, rng)
    return chosen


def skeleton(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a boolean mask: its 1-px skeleton."""
    image = np.pad(mask, 1).astype(np.uint8)
    changed = True
    while changed:
        changed = False
        for first in (True, False):
            p = [np.roll(np.roll(image, -dy, 0), -dx, 1) for dy, dx in
                 ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))]
            neighbours = sum(p)
            transitions = sum((p[i] == 0) & (p[(i + 1) % 8] == 1) for i in range(8))
            if first:
                ends = (p[0] * p[2] * p[4] == 0) & (p[2] * p[4] * p[6] == 0)
            else:
                ends = (p[0] * p[2] * p[6] == 0) & (p[0] * p[4] * p[6] == 0)
            remove = (image == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & ends
            if remove.any():
                image[remove] = 0
                changed = True
    return image[1:-1, 1:-1].astype(bool)


def _pieces(line: np.ndarray, within: np.ndarray, budget: float, rng: np.random.Generator) -> np.ndarray:
    """Pieces of ``line`` widened to the brush (inside ``within``), one grid tile each, drawn at random while they
    fit in ``budget`` pixels."""
    brush = ndimage.binary_dilation(line, iterations=BRUSH // 2) & within
    rows, cols = np.indices(line.shape) // STROKE_TILE
    tiles = rows * (cols.max() + 1) + cols
    sizes = np.bincount(tiles[brush], minlength=tiles.max() + 1)
    picked, used = [], 0
    for tile in rng.permutation(np.flatnonzero(sizes)):
        if used + sizes[tile] <= budget:
            picked.append(tile)
            used += sizes[tile]
    return brush & np.isin(tiles, picked)
