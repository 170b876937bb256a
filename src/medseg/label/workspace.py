"""The labelling workspace: a dataset being labelled -- in the folder format, nnU-Net raw or the MSD layout -- read
and written one image (or one slice of a volume) at a time, and the labelling state kept beside it in
``DIR/.medseg-label/`` (``state.json`` and the training rounds' run folders).

Masks are written where and as the dataset's layout keeps them (:class:`Layout`), atomically: the folder format's
``DIR/masks/<id>.png`` (``<case>.nii.gz`` for a volume; binary masks as 0/255; 128: not labelled), or nnU-Net's
and the MSD's ``labelsTr/<case><file_ending>`` (class ids; nnU-Net v2's ``ignore`` label: not labelled, declared
in ``dataset.json`` at the first partial save where it is not yet). Every mask has a version (a digest of its file;
``none`` before it exists); a save names the version it started from, and one that does not match what is on disk
is refused (:class:`Conflict`), so a second tab never overwrites a newer label silently.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from medseg.data.datasets import (IGNORE_NAME, Classes, Item, Sample, dataset_json_labels, default_class_names,
                                  detect_format, find_classes, label_kind, load_items, load_sample, read_dataset_json)
from medseg.data.intensity import Schemes
from medseg.data.readers import UNLABELLED, UNLABELLED_VALUE, Reader, mask_pixels, write_array
from medseg.data.volumes import is_volume_file, write_nifti_labels
from medseg.errors import MedsegError
from medseg.files import atomic_write_json, atomic_write_text
from medseg.typed_file import TypedFile

FOLDER = ".medseg-label"
LAYOUTS = ("folder", "nnunet", "msd")
NONE = "none"  # the version of a mask that does not exist yet
WIRE_UNLABELLED = 255  # an unlabelled pixel in the labels the page sends and receives (uint8 class ids)
RoundStatus = Literal["running", "done", "failed", "stopped"]


class Conflict(MedsegError):
    """A save that started from another version of the mask than the one on disk."""


@dataclass(frozen=True)
class Entry:
    """One image of the queue: a 2D image, or a volume as its ``slices`` along its items' axis."""

    id: str
    image: Path
    mask: Path  # where its mask is, or will be written
    items: tuple[Item, ...]  # a volume's slices in order; a 2D image's one item

    @property
    def volume(self) -> bool:
        """The image is a volume file (a single-slice one too): its mask is a volume on the image's grid."""
        return self.items[0].slice is not None

    @property
    def slices(self) -> int:
        return len(self.items)

    def item(self, slice_index: int) -> Item:
        if not 0 <= slice_index < self.slices:
            raise MedsegError(self.image, f"has {self.slices} slice(s), slice {slice_index} requested")
        return self.items[slice_index]


@dataclass(frozen=True)
class Round:
    """One training from the page: its run folder (relative to the workspace folder) and how it ended."""

    run: str
    status: RoundStatus
    labelled: int  # images with a mask when it started
    reason: str = ""  # why it failed or stopped
    val_dice: float | None = None
    steps: int = 0


@dataclass(frozen=True)
class State:
    """``state.json``: the run whose model is in use (the last good one), the training settings, the rounds, and
    the predictions a person accepted."""

    model: str | None = None  # a run folder
    budget_minutes: float | None = 3.0
    iterations: int | None = None  # train this many steps instead of a budget
    auto_every: int = 0  # train after every this many new labels (0: only when asked)
    new_labels: int = 0  # saves since the last round started
    rounds: tuple[Round, ...] = ()
    accepted: tuple[str, ...] = field(default_factory=tuple)  # "<id>" or "<id>:<slice>"


STATE_FILE = TypedFile(State, "labelling state")


@dataclass(frozen=True)
class Layout:
    """How a dataset's layout keeps labels: the ``folder`` format (masks in ``DIR/masks``; binary masks as 0/255,
    128 for an unlabelled pixel), or ``nnunet`` / ``msd`` (``DIR/labelsTr``, class ids as stored, ``ignore`` for
    an unlabelled pixel: the id ``dataset.json`` gives it, None until it is declared)."""

    format: str
    root: Path
    ignore: int | None = None

    @classmethod
    def of(cls, root: Path) -> "Layout":
        if not root.is_dir():
            raise MedsegError(root, "dataset folder not found")
        try:
            fmt = detect_format(root)
        except MedsegError:
            fmt = "unrecognised"
        if fmt not in LAYOUTS:
            raise MedsegError(root, f"medseg label works on the folder format (DIR/images, DIR/masks), nnU-Net raw "
                                    f"and the MSD layout, not this one ({fmt}); `medseg data convert` writes other "
                                    "layouts in the folder format")
        labels = dataset_json_labels(root) if fmt != "folder" else None
        return cls(fmt, root, labels[1] if labels else None)

    @property
    def unlabelled(self) -> int | None:
        """The stored value of an unlabelled pixel (None: not declared yet)."""
        return UNLABELLED_VALUE if self.format == "folder" else self.ignore

    def mask_path(self, name: str, volume: bool) -> Path:
        """Where the mask of image (case) ``name`` goes."""
        if self.format == "folder":
            return self.root / "masks" / f"{name}{'.nii.gz' if volume else '.png'}"
        ending = read_dataset_json(self.root).get("file_ending") or (".nii.gz" if volume else ".png")
        return self.root / "labelsTr" / f"{name}{ending}"

    def stored(self, ids: np.ndarray, n_classes: int) -> np.ndarray:
        """Class ids (:data:`UNLABELLED` where not labelled) as the layout stores them, uint8."""
        if self.format == "folder":
            return mask_pixels(ids, n_classes)
        return np.where(ids == UNLABELLED, self.ignore or 0, ids).astype(np.uint8)  # ignore: declared if needed

    def declare_ignore(self, n_classes: int) -> "Layout":
        """nnU-Net v2's ``ignore`` label added to ``dataset.json`` (the highest id, ``n_classes``), atomically."""
        meta = read_dataset_json(self.root)
        labels = dict(meta["labels"])
        by_name = all(not str(key).strip().isdigit() for key in labels)  # nnU-Net v2 {"name": id}; MSD {"id": name}
        labels.update({IGNORE_NAME: n_classes} if by_name else {str(n_classes): IGNORE_NAME})
        atomic_write_text(self.root / "dataset.json", json.dumps({**meta, "labels": labels}, indent=1) + "\n")
        return replace(self, ignore=n_classes)


def mask_version(path: Path) -> str:
    """A digest of a mask file, or :data:`NONE` when there is none."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else NONE


class Workspace:
    """A dataset ``root`` being labelled (see :class:`Layout`), and its state. Thread-safe: the page's requests,
    the prediction worker and the training watcher share it."""

    def __init__(self, root: str | Path, class_names: tuple[str, ...] | None = None) -> None:
        self.root = Path(root)
        self.layout = Layout.of(self.root)
        self.folder = self.root / FOLDER
        self.folder.mkdir(exist_ok=True)
        self.classes = self._classes(class_names)
        self.entries = _entries(self.layout, load_items(self.root, self.layout.format))
        self._lock = threading.RLock()
        self._reader = Reader()
        self._statuses: dict[str, tuple[str, str]] = {}  # id -> (mask version, status)
        self.state = STATE_FILE.load(self.state_path) if self.state_path.is_file() else State()

    @property
    def n_classes(self) -> int:
        return self.classes.count

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    def run_folder(self, name: str) -> Path:
        return self.folder / "runs" / name

    def _classes(self, names: tuple[str, ...] | None) -> Classes:
        """dataset.json's classes; else the masks'; else ``names`` (written to dataset.json, so that training
        agrees) or a binary task."""
        path = self.root / "dataset.json"
        if names is not None and not path.is_file():  # the folder format: the others have a dataset.json
            labels = {"background": 0, **{name: k for k, name in enumerate(names, 1)}}
            atomic_write_text(path, json.dumps({"name": self.root.name, "labels": labels}, indent=1) + "\n")
        if path.is_file():
            read_dataset_json(self.root)
        items = load_items(self.root, self.layout.format)
        if path.is_file() or any(item.labelled for item in items):
            classes = find_classes(self.root, items)
            if names is not None and classes.names[1:] != tuple(names):
                raise MedsegError("--classes", f"{self.root} already has the classes {', '.join(classes.names[1:])}")
            return classes
        return Classes(default_class_names(2), "no mask yet: binary")

    # -- state ------------------------------------------------------------------------------------------------------
    def update(self, **changes: object) -> State:
        """Change and save the state (atomically)."""
        with self._lock:
            self.state = replace(self.state, **changes)
            atomic_write_json(self.state_path, asdict(self.state))
            return self.state

    def entry(self, entry_id: str) -> Entry:
        try:
            return self.entries[entry_id]
        except KeyError:
            raise MedsegError(entry_id, "no such image in the dataset") from None

    # -- reading ----------------------------------------------------------------------------------------------------
    def sample(self, entry_id: str, slice_index: int = 0, normalize: Schemes = "zscore",
               channels: int | None = None) -> Sample:
        """An image (a volume's slice), its mask and its labelled pixels, as training reads them (a volume's slice
        with its case's statistics for ``normalize``'s schemes; in ``channels`` channels, None: as stored)."""
        with self._lock:
            return load_sample(self.entry(entry_id).item(slice_index), channels, self.n_classes, self._reader,
                               normalize)

    def samples(self, entry_id: str, normalize: Schemes = "zscore", channels: int | None = None) -> list[Sample]:
        entry = self.entry(entry_id)
        return [self.sample(entry_id, z, normalize, channels) for z in range(entry.slices)]

    def labels(self, entry_id: str, slice_index: int = 0) -> tuple[np.ndarray, str]:
        """The saved labels of an image (slice) as uint8 class ids with :data:`WIRE_UNLABELLED` where nothing is
        labelled (everywhere before a mask exists), and the mask's version."""
        with self._lock:
            entry = self.entry(entry_id)
            version = mask_version(entry.mask)
            sample = self.sample(entry_id, slice_index)
            if sample.mask is None:
                return np.full(sample.image.shape[:2], WIRE_UNLABELLED, np.uint8), version
            wire = sample.mask.astype(np.uint8)
            if sample.labelled is not None:
                wire[~sample.labelled] = WIRE_UNLABELLED
            return wire, version

    def status(self, entry_id: str) -> str:
        """``labelled`` (every pixel of every slice), ``partial`` or ``unlabelled`` (no mask); decoded once per
        version of the mask."""
        version = mask_version(self.entry(entry_id).mask)
        known = self._statuses.get(entry_id)
        if known is None or known[0] != version:
            kinds = {label_kind(sample) for sample in self.samples(entry_id)}
            status = "labelled" if kinds == {"dense"} else "unlabelled" if kinds == {"none"} else "partial"
            known = self._statuses[entry_id] = (version, status)
        return known[1]

    def labelled(self) -> int:
        """How many images have a mask (unreadable ones aside)."""
        count = 0
        for entry_id in self.entries:
            try:
                count += self.status(entry_id) != "unlabelled"
            except MedsegError:
                continue
        return count

    def window(self, entry_id: str) -> tuple[float, float]:
        """The default display window of an image: its 1st to 99th intensity percentile (a volume's, over the
        volume), so 16-bit and scanner-unit data are shown by their own range."""
        entry = self.entry(entry_id)
        with self._lock:
            data = self._reader.volume(entry.image).data if entry.volume else self.sample(entry_id).image
        values = data.ravel()
        low, high = np.percentile(values[:: max(1, values.size // 500_000)], [1, 99])
        return float(low), float(high) if high > low else float(low) + 1.0

    # -- writing ----------------------------------------------------------------------------------------------------
    def save(self, entry_id: str, slice_index: int, wire: np.ndarray, base: str, dense: bool) -> str:
        """Write an image's (slice's) labels -- uint8 class ids, :data:`WIRE_UNLABELLED` unlabelled, which become
        background when ``dense`` -- if the mask on disk is still version ``base``; returns the new version."""
        with self._lock:
            entry = self.entry(entry_id)
            current = mask_version(entry.mask)
            if current != base:
                raise Conflict(entry.mask, "was saved since this image was opened (in another tab?); reload it to "
                                           "see the saved labels before saving again")
            ids = self._ids(wire, entry, slice_index, dense)
            partial = (ids == UNLABELLED).any() or (entry.slices > 1 and not entry.mask.is_file())  # other slices
            if partial and self.layout.unlabelled is None:
                self._declare_ignore()
                entry = self.entry(entry_id)
            if entry.volume:
                self._save_slice(entry, slice_index, ids)
            else:
                write_array(entry.mask, self.layout.stored(ids, self.n_classes))
            if not entry.items[0].masks:  # the image's first mask: its items read it from now on
                self.entries[entry_id] = replace(entry, items=tuple(replace(item, masks=(entry.mask,))
                                                                    for item in entry.items))
            self.update(new_labels=self.state.new_labels + 1)
            return mask_version(entry.mask)

    def _declare_ignore(self) -> None:
        """nnU-Net's ``ignore`` label declared in ``dataset.json`` for the first partial label, and every image
        read with it."""
        self.layout = self.layout.declare_ignore(self.n_classes)
        value = self.layout.unlabelled
        self.entries = {name: replace(entry, items=tuple(replace(item, unlabelled_value=value)
                                                         for item in entry.items))
                        for name, entry in self.entries.items()}

    def _ids(self, wire: np.ndarray, entry: Entry, slice_index: int, dense: bool) -> np.ndarray:
        """Wire labels checked against the image's shape and the classes, as class ids with :data:`UNLABELLED`."""
        shape = self.sample(entry.id, slice_index).image.shape[:2]
        if wire.size != shape[0] * shape[1]:
            raise MedsegError(entry.id, f"labels of {wire.size} pixels for an image of {shape[1]} x {shape[0]}")
        ids = wire.reshape(shape).astype(np.int64)
        ids[ids == WIRE_UNLABELLED] = 0 if dense else UNLABELLED
        if ids.max(initial=0) >= self.n_classes:
            raise MedsegError(entry.id, f"class id {int(ids.max())} is not among the {self.n_classes} classes")
        return ids

    def _save_slice(self, entry: Entry, slice_index: int, ids: np.ndarray) -> None:
        """A volume's mask with one slice replaced (the other slices as saved; not labelled before a mask)."""
        item = entry.item(slice_index)
        shape = self._reader.volume(entry.image).data.shape[:3]
        unlabelled = self.layout.unlabelled if self.layout.unlabelled is not None else 0  # 0: ids has no unlabelled
        if entry.mask.is_file():
            stored = self._reader.volume(entry.mask, label=True).data.astype(np.int64)
        else:
            stored = np.full(shape, unlabelled, np.int64)
        index = [slice(None)] * 3
        index[item.slice.axis] = item.slice.index
        stored[tuple(index)] = np.where(ids == UNLABELLED, unlabelled, ids)
        entry.mask.parent.mkdir(parents=True, exist_ok=True)
        write_nifti_labels(entry.mask, stored, self._reader.volume(entry.image))

    def pixels(self, entry_id: str, slice_index: int = 0) -> np.ndarray:
        """An image (a volume's slice) as float32 ``H x W x C``: a 2D image in the reader's [0, 1], a volume's
        slice in its stored units (HU, scanner units)."""
        entry = self.entry(entry_id)
        with self._lock:
            if entry.volume:
                item = entry.item(slice_index)
                return self._reader.slice(entry.image, item.slice)
            return self.sample(entry_id).image


def _entries(layout: Layout, items: list[Item]) -> dict[str, Entry]:
    """The queue's entries: an image each, a volume's slices as one (in slice order)."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    entries = {}
    for name, members in groups.items():
        members.sort(key=lambda item: item.slice_index)
        first = members[0]
        mask = first.masks[0] if first.masks else layout.mask_path(name, is_volume_file(first.image))
        entries[name] = Entry(name, first.image, mask, tuple(members))
    return entries
