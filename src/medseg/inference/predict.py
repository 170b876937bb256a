"""Prediction on files: images, folders, TIFF stacks and volumes of any size -> masks on disk (and, on request,
probability maps, overlays and uncertainty maps with a per-input score), through a
:class:`~medseg.inference.predictor.Predictor`. A NIfTI volume's mask (and uncertainty) is a NIfTI with the image's
affine and header; a DICOM's is a PNG (a TIFF stack for several slices) and a DICOM Segmentation object that
references its source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from medseg.data.readers import Reader, mask_pixels, read_channels, volume_slice, write_array, write_mask
from medseg.data.volumes import (IMAGE_EXTENSIONS, Volume, is_nifti, is_volume_file, volume_stem, with_channels,
                                 write_nifti_labels, write_nifti_map)
from medseg.files import atomic_write_csv
from medseg.data.intensity import nonzero_channels
from medseg.inference.postprocess import postprocess, to_labels
from medseg.inference.predictor import Predictor
from medseg.inference.uncertainty import entropy_map, entropy_pixels, uncertainty_score, unsure_fraction
from medseg.visualize import overlay
from medseg.errors import MedsegError
from medseg.log import get_logger, progress


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders expanded to their image and volume files and DICOM series folders (sorted); a
    DICOM series folder given itself is one input. Missing or empty inputs are errors."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir() and is_volume_file(path):
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if not p.name.startswith(".")
                           and (p.suffix.lower() in IMAGE_EXTENSIONS or is_volume_file(p)))
            if not found:
                raise MedsegError(path, "folder contains no images")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise MedsegError(path, "input not found")
    return files


def pages(reader: Reader, path: Path, channels: int) -> Iterator[np.ndarray]:
    """The 2D images of a file: the image itself, or each page of a TIFF stack (one read each)."""
    count = reader.pages(path)
    for page in range(count):
        yield reader.image(path, channels, page if count > 1 else None)


@dataclass(frozen=True)
class VolumePrediction:
    """A volume's class ids (uint8) and, when asked for, its scaled entropy (float32), both ``X x Y x Z`` in
    canonical order (as :attr:`Volume.data`; :meth:`Volume.to_file` gives the file's order)."""

    labels: np.ndarray
    uncertainty: np.ndarray | None = None


def predict_volume(predictor: Predictor, volume: Volume, where: str | Path = "volume",
                   uncertainty: bool = False) -> VolumePrediction:
    """A whole volume's prediction: slices along the run's axis (else the volume's coarsest), normalised with the
    volume's statistics, resampled to the run's spacing and back, labelled (threshold or argmax) one slice at a
    time, so that only one slice's probabilities are ever held, then post-processed in 3D; with ``uncertainty``
    each slice's entropy map too (held as float16)."""
    spec = predictor.spec
    if volume.info.channels != spec.channels:
        raise MedsegError(where, f"has {volume.info.channels} channel(s), the run takes {spec.channels}")
    axis = spec.slice_axis if spec.slice_axis is not None else volume.info.slice_axis()
    statistics = volume.statistics(nonzero_channels(spec.normalize, spec.channels))
    spacing = volume.info.in_plane_spacing(axis)
    shape = tuple(n for a, n in enumerate(volume.data.shape[:3]) if a != axis)
    labels = np.empty((volume.data.shape[axis], *shape), np.uint8)
    entropy = np.empty(labels.shape, np.float16) if uncertainty else None
    for z in range(labels.shape[0]):
        probabilities = predictor.probabilities(volume_slice(volume, axis, z, spec.channels, where), statistics,
                                                spacing)
        labels[z] = to_labels(probabilities, spec.threshold, spec.n_classes)
        if entropy is not None:
            entropy[z] = entropy_map(probabilities, spec.n_classes)
    labels = postprocess(labels, spec.postprocess)  # in 3D: the largest component is the volume's
    return VolumePrediction(np.moveaxis(labels, 0, axis),
                            None if entropy is None else np.moveaxis(entropy, 0, axis).astype(np.float32))


@dataclass(frozen=True)
class Input:
    """What is predicted as one: an image or volume file (or a DICOM folder), or nnU-Net raw's channel files of
    one case (``<case>_0000``, ``<case>_0001``, ...); ``name`` names its outputs."""

    name: str
    paths: tuple[Path, ...]

    @property
    def volume(self) -> bool:
        return is_volume_file(self.paths[0])


def channel_inputs(files: Sequence[Path], channels: int) -> list[Input]:
    """``files`` as inputs: for a run of several channels, nnU-Net raw's channel files (``<case>_XXXX``) grouped by
    case (a case missing a channel is a one-line error); every other file alone."""
    from medseg.data.datasets import CHANNEL_FILE, channel_files

    stems = {(volume_stem(p) if is_volume_file(p) else p.stem): p for p in files}
    split = {stem: path for stem, path in stems.items() if channels > 1 and CHANNEL_FILE.match(stem)}
    grouped = channel_files(split, channels, f"the run takes {channels} channels") if split else {}
    alone = [Input(stem, (path,)) for stem, path in stems.items() if stem not in split]
    return alone + [Input(case, paths) for case, paths in grouped.items()]


def predict_paths(predictor: Predictor, inputs: Sequence[str | Path], out: str | Path,
                  save_probabilities: bool = False, save_overlays: bool = False,
                  save_uncertainty: bool = False) -> list[Path]:
    """Predict every input (TIFF stacks frame by frame, written back as stacks; a run of several channels takes
    nnU-Net raw's file per channel); returns the mask paths. ``save_uncertainty``: each input's entropy map beside
    its mask (``<name>_uncertainty``) and its score in ``uncertainty.csv``."""
    files = expand_inputs(inputs)
    names: dict[str, Path] = {}
    for path in files:
        stem = volume_stem(path) if is_volume_file(path) else path.stem
        if names.setdefault(stem, path) != path:
            raise MedsegError(path, f"has the same name as {names[stem]}, so their masks would overwrite each "
                                    "other in --out; predict them into separate folders")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, scores = [], []
    with Reader() as reader:
        for source in progress(channel_inputs(files, predictor.spec.channels), desc="predict", unit="img"):
            if source.volume:
                for part, volume in _volumes(reader, source.paths):
                    prediction = predict_volume(predictor, volume, source.paths[0], save_uncertainty)
                    stem = "_".join([source.name, *([part.replace(" ", "")] if part else [])])
                    written.append(_write_volume(out, source.paths[0], stem, part, predictor, volume,
                                                 prediction.labels))
                    if prediction.uncertainty is not None:
                        scores.append(_write_volume_uncertainty(out, source.paths[0], stem, volume,
                                                                prediction.uncertainty))
                continue
            mask, row = _predict_image(predictor, reader, source, out, save_probabilities, save_overlays,
                                       save_uncertainty)
            written.append(mask)
            scores += [row] if row else []
    if scores:
        atomic_write_csv(out / "uncertainty.csv", scores)
    spec = predictor.spec
    get_logger().info("wrote %d mask file(s) to %s (threshold %.2f, post-processing: %s)%s", len(written), out,
                      spec.threshold, spec.postprocess.describe(),
                      "; uncertainty maps and uncertainty.csv beside them" if scores else "")
    return written


def _predict_image(predictor: Predictor, reader: Reader, source: Input, out: Path, save_probabilities: bool,
                   save_overlays: bool, save_uncertainty: bool) -> tuple[Path, dict[str, object] | None]:
    """A 2D input's mask (its frames', for a TIFF stack), and the files asked for beside it."""
    spec = predictor.spec
    images = (pages(reader, source.paths[0], spec.channels) if len(source.paths) == 1
              else [read_channels(reader, source.paths, spec.channels)])
    labels_stack, prob_stack, overlays, entropies = [], [], [], []
    for image in images:
        probabilities = predictor.probabilities(image)
        labels = predictor.labels(probabilities)
        labels_stack.append(labels)
        if save_probabilities:
            prob_stack.append(probabilities)
        if save_overlays:
            overlays.append(overlay(image, labels))
        if save_uncertainty:
            entropies.append(entropy_map(probabilities, spec.n_classes))
    mask = _write(out, source.name, spec.n_classes, labels_stack, prob_stack, overlays)
    return mask, _write_uncertainty(out, source, entropies) if entropies else None


def _volumes(reader: Reader, paths: tuple[Path, ...]) -> list[tuple[str, Volume]]:
    """An input's volumes: one (its channel files' volumes as one's channels), or a DICOM folder's parts (series,
    echoes, ...), each named."""
    if len(paths) > 1:
        return [("", with_channels([reader.volume(path) for path in paths], paths))]
    if is_nifti(paths[0]):
        return [("", reader.volume(paths[0]))]
    from medseg.data.dicom import read_dicom_parts

    return read_dicom_parts(paths[0])


def _write_uncertainty(out: Path, source: Input, entropies: list[np.ndarray]) -> dict[str, object]:
    """A 2D input's scaled entropy beside its mask as 8-bit PNG (a TIFF stack for a stack's frames), and its
    ``uncertainty.csv`` row."""
    planes = [entropy_pixels(e) for e in entropies]
    path = out / f"{source.name}_uncertainty.{'tif' if len(planes) > 1 else 'png'}"
    write_array(path, np.stack(planes) if len(planes) > 1 else planes[0], stack=len(planes) > 1)
    return _uncertainty_row(source.paths[0], np.stack(entropies), path)


def _write_volume_uncertainty(out: Path, source: Path, stem: str, volume: Volume,
                              entropy: np.ndarray) -> dict[str, object]:
    """A volume's scaled entropy (canonical) beside its mask, in the input's voxel order: a float NIfTI for a NIfTI
    input, an 8-bit PNG (a TIFF stack for several slices) for a DICOM one; and its ``uncertainty.csv`` row."""
    if is_nifti(source):
        path = out / f"{stem}_uncertainty.nii.gz"
        write_nifti_map(path, entropy, volume)
        return _uncertainty_row(source, entropy, path)
    whole = volume.to_file(entropy)
    planes = [entropy_pixels(whole[..., z]) for z in range(whole.shape[-1])]
    path = out / f"{stem}_uncertainty.{'tif' if len(planes) > 1 else 'png'}"
    write_array(path, np.stack(planes) if len(planes) > 1 else planes[0], stack=len(planes) > 1)
    return _uncertainty_row(source, entropy, path)


def _uncertainty_row(source: Path, entropy: np.ndarray, path: Path) -> dict[str, object]:
    return {"input": source.name, "uncertainty": round(uncertainty_score(entropy), 6),
            "unsure_fraction": round(unsure_fraction(entropy), 6), "map": path.name}


def _write_volume(out: Path, source: Path, stem: str, part: str, predictor: Predictor, volume: Volume,
                  labels: np.ndarray) -> Path:
    """A volume's mask (canonical ``labels``) in its input's voxel order: NIfTI beside a NIfTI input; PNG (TIFF
    stack) and DICOM SEG for a DICOM input (``part`` of its folder)."""
    from medseg.data.dicom import write_dicom_seg

    spec = predictor.spec
    if is_nifti(source):
        path = out / f"{stem}.nii.gz"
        write_nifti_labels(path, labels, volume)
        return path
    labels = volume.to_file(labels)  # rows x columns x slices
    write_dicom_seg(out / f"{stem}_seg.dcm", labels, source, spec.class_names, part)
    planes = [mask_pixels(labels[:, :, z], spec.n_classes) for z in range(labels.shape[2])]
    if len(planes) == 1:
        write_array(out / f"{stem}.png", planes[0])
        return out / f"{stem}.png"
    write_array(out / f"{stem}.tif", np.stack(planes), stack=True)
    return out / f"{stem}.tif"


def _write(out: Path, stem: str, n_classes: int, labels: list[np.ndarray], probabilities: list[np.ndarray],
           overlays: list[np.ndarray]) -> Path:
    is_stack = len(labels) > 1
    mask_path = out / f"{stem}{'.tif' if is_stack else '.png'}"
    if is_stack:
        write_array(mask_path, np.stack([mask_pixels(frame, n_classes) for frame in labels]), stack=True)
    else:
        write_mask(mask_path, labels[0], n_classes)
    if probabilities:
        write_array(out / f"{stem}_prob.tif", np.stack(probabilities) if is_stack else probabilities[0],
                    stack=is_stack)
    for z, picture in enumerate(overlays):
        write_array(out / f"{stem}{f'_{z:03d}' if is_stack else ''}_overlay.png", picture)
    return mask_path
