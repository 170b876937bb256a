"""Accuracy in a time budget, side by side with a plain MONAI script, on the shared data.

    python benchmarks/accuracy.py --work /tmp/medseg-accuracy --out accuracy.json --markdown docs/accuracy.md

For every dataset and budget B, in one run on one machine:
- **peer**: MONAI ``BasicUNet(spatial_dims=2, features=(32, 32, 64, 128, 256, 32))``, Adam lr 1e-3, batch 4,
  BCE + soft Dice, 10-step warm-up then cosine decay driven by elapsed wall time, per-image z-score, random flips
  and rot90 (horizontal flips only for ultrasound), an affine with p=0.5 (rotation +-15 deg, scale 0.85-1.15),
  intensity jitter; 256-px random patches and ``sliding_window_inference`` (overlap 0.5, gaussian) for the
  thin-structure sets, 256x256 resizing (logits resized back) for the lesion set; the final weights, no
  validation, every training image used.
- **medseg**: ``medseg train --data D --budget B`` with nothing else (and ``--out``).

The multi-class volume set (MSD Task04 hippocampus) is split 80/20 by a seeded permutation of its labelled cases
(the test cases are listed in the JSON and the Markdown) into a work copy in the MSD layout (``imagesTs`` +
``labelsTs`` hold the test cases). The peer there is ``BasicUNet(out_channels=3)`` on every slice along the last
voxel axis of every training case (per-volume z-score, zero-padded to 64x64, batch 32, CE + soft Dice), predicting
each test volume slice by slice (padded to a multiple of 16, argmax); medseg predicts the test volumes with
``medseg predict RUN imagesTs``. Both are scored in 3D per case: Dice per class and their mean (mean foreground
Dice), averaged over the cases and pooled.

``--variant NAME --set KEY=VALUE ...`` runs medseg once more with overrides, as the system ``medseg:NAME``; such
cells are listed for diagnosis (e.g. what a wider network would have scored) and never count for the targets.

Both are scored by the same code on the test split: per-image (per-case) and pooled Dice, inside the field of view
where the dataset has one. Every (dataset, system, budget) cell is saved under ``--work/cells`` as it finishes, so an
interrupted run resumes; a cell measured by other code (this script, a variant's overrides, or for medseg its
source) is measured again. Timings are only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Dataset:
    name: str
    thin: bool  # the peer's input mode: native-resolution patches (thin structures) or resizing (lesions)
    upright: bool  # the peer flips horizontally only (ultrasound)
    test_ids: tuple[str, ...] | None = None  # None: split_seed's split, else the dataset's split.csv
    split_seed: int | None = None  # a seeded 80/20 split of the labelled cases
    volumes: bool = False  # 3D NIfTI volumes in the MSD layout; the peer works on slices along the last axis
    classes: tuple[str, ...] = ("foreground",)  # the foreground classes 1..K-1
    size: int = 256  # the peer's training input side: patch (thin), resize target, or zero-padded canvas (volumes)
    batch: int = 4  # the peer's batch size
    metric: str = "dice_pooled"  # what the targets compare: pooled Dice or the mean over test cases (dice_mean)
    floor: float | None = None  # medseg at the largest budget must also reach this

    @property
    def n_classes(self) -> int:
        return len(self.classes) + 1


DATASETS = {
    "isbi2012_em": Dataset("isbi2012_em", thin=True, upright=False,
                           test_ids=tuple(f"{i:02d}" for i in range(24, 30))),
    "busi": Dataset("busi", thin=False, upright=True),
    "chase_db1": Dataset("chase_db1", thin=True, upright=False),
    "msd_hippocampus": Dataset("msd_hippocampus", thin=False, upright=False, split_seed=0, volumes=True,
                               classes=("anterior", "posterior"), size=64, batch=32, metric="dice_mean",
                               floor=0.86),
}
NIFTI = ".nii.gz"


def labelled_cases(dataset: Dataset) -> list[str]:
    """The sorted names of the shared volume set's labelled cases (``labelsTr/<case>.nii.gz``)."""
    return sorted(p.name[: -len(NIFTI)] for p in (SHARED / dataset.name / "labelsTr").glob(f"[!.]*{NIFTI}"))


def test_ids(dataset: Dataset) -> tuple[str, ...] | None:
    """The test cases the benchmark chooses: fixed ones, the seeded 80/20 split's, or None (split.csv's)."""
    if dataset.split_seed is None:
        return dataset.test_ids
    cases = labelled_cases(dataset)
    order = np.random.default_rng(dataset.split_seed).permutation(len(cases))
    return tuple(sorted(cases[i] for i in order[: round(len(cases) * 0.2)]))


def prepare(dataset: Dataset, work: Path) -> Path:
    """A copy of the shared dataset in ``work`` whose split.csv holds the benchmark's train/test split."""
    if dataset.volumes:
        return prepare_volumes(dataset, work)
    source, target = SHARED / dataset.name, work / "data" / dataset.name
    if (target / "split.csv").is_file():
        return target
    for sub in ("images", "masks", "regions"):
        if (source / sub).is_dir():
            shutil.copytree(source / sub, target / sub, dirs_exist_ok=True)
    if dataset.test_ids is None:
        shutil.copy(source / "split.csv", target / "split.csv")
    else:
        ids = sorted(p.stem for p in (source / "images").iterdir())
        rows = [f"{i},{'test' if i in dataset.test_ids else 'train'}" for i in ids]
        (target / "split.csv").write_text("id,split\n" + "\n".join(rows) + "\n")
    return target


def prepare_volumes(dataset: Dataset, work: Path) -> Path:
    """An MSD-layout copy in ``work`` (copies, not symlinks: medseg refuses files resolving outside its data root):
    training cases in imagesTr/labelsTr, test cases in imagesTs/labelsTs, and dataset.json with its lists rewritten
    to match (written last: it marks the copy done)."""
    source, target = SHARED / dataset.name, work / "data" / dataset.name
    if (target / "dataset.json").is_file():
        return target
    test = set(test_ids(dataset))
    cases = labelled_cases(dataset)
    for case in cases:
        for kind in ("images", "labels"):
            copy = target / f"{kind}{'Ts' if case in test else 'Tr'}" / f"{case}{NIFTI}"
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / f"{kind}Tr" / f"{case}{NIFTI}", copy)
    description = json.loads((source / "dataset.json").read_text())
    train = [c for c in cases if c not in test]
    description.update(numTraining=len(train), numTest=len(test),
                       training=[{"image": f"./imagesTr/{c}{NIFTI}", "label": f"./labelsTr/{c}{NIFTI}"} for c in train],
                       test=[f"./imagesTs/{c}{NIFTI}" for c in sorted(test)])
    (target / "dataset.json").write_text(json.dumps(description, indent=1))
    return target


def load(dataset: Dataset, data: Path) -> dict[str, list[dict[str, Any]]]:
    return load_volumes(data) if dataset.volumes else load_split(data)


def load_split(data: Path) -> dict[str, list[dict[str, Any]]]:
    """Images (H x W x C float32 [0, 1]), masks (H x W {0,1}) and regions per split, read with Pillow."""
    from PIL import Image

    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for line in (data / "split.csv").read_text().splitlines()[1:]:
        item_id, split = line.split(",")
        image = np.asarray(Image.open(data / "images" / f"{item_id}.png"), dtype=np.float32) / 255
        image = image[..., None] if image.ndim == 2 else image[..., :3]
        mask = (np.asarray(Image.open(data / "masks" / f"{item_id}.png")) > 0).astype(np.int64)
        region_path = data / "regions" / f"{item_id}.png"
        region = np.asarray(Image.open(region_path)) > 0 if region_path.is_file() else None
        splits[split].append({"id": item_id, "image": image, "mask": mask, "region": region})
    return splits


def read_volume(path: Path, label: bool = False) -> np.ndarray:
    """A NIfTI file read with nibabel: images float32 ``X x Y x Z x C``, labels int64 ``X x Y x Z`` (stored as
    whole numbers, in any type)."""
    import nibabel as nib

    data = np.asanyarray(nib.load(str(path)).dataobj)
    if not label:
        data = data.astype(np.float32)
        return data[..., None] if data.ndim == 3 else data
    if not np.array_equal(data, np.round(data)):
        raise SystemExit(f"{path}: label volume has non-integer values")
    return data.astype(np.int64)


def load_volumes(data: Path) -> dict[str, list[dict[str, Any]]]:
    """Images and labels per split of an MSD-layout copy: train from imagesTr/labelsTr, test from
    imagesTs/labelsTs."""
    splits: dict[str, list[dict[str, Any]]] = {}
    for split, suffix in (("train", "Tr"), ("test", "Ts")):
        paths = sorted((data / f"images{suffix}").glob(f"*{NIFTI}"))
        splits[split] = [{"id": p.name[: -len(NIFTI)], "image": read_volume(p),
                          "mask": read_volume(data / f"labels{suffix}" / p.name, label=True), "region": None}
                         for p in paths]
    return splits


def zscore(image: np.ndarray) -> np.ndarray:
    """Per channel (the last axis), over the whole image or volume."""
    axes = tuple(range(image.ndim - 1))
    return (image - image.mean(axis=axes)) / np.maximum(image.std(axis=axes), 1e-6)


def planes(image: np.ndarray, mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """A 2D image as it is; a volume (``X x Y x Z x C``) as its slices along the last voxel axis."""
    if image.ndim == 3:
        return [(image, mask)]
    return [(image[:, :, k], mask[:, :, k]) for k in range(image.shape[2])]


def peer_transforms(dataset: Dataset):
    from monai import transforms as T

    keys, size = ["image", "label"], (dataset.size, dataset.size)
    steps = [T.SpatialPadd(keys, size) if dataset.volumes
             else T.RandSpatialCropd(keys, size, random_size=False) if dataset.thin
             else T.Resized(keys, size, mode=("bilinear", "nearest")),
             T.RandFlipd(keys, prob=0.5, spatial_axis=1)]
    if not dataset.upright:
        steps += [T.RandFlipd(keys, prob=0.5, spatial_axis=0), T.RandRotate90d(keys, prob=0.5)]
    steps += [T.RandAffined(keys, prob=0.5, rotate_range=(math.radians(15),), scale_range=(0.15, 0.15),
                            mode=("bilinear", "nearest"), padding_mode="reflection"),
              T.RandScaleIntensityd(["image"], factors=0.1, prob=0.5),
              T.RandShiftIntensityd(["image"], offsets=0.1, prob=0.5)]
    return T.Compose(steps)


def peer_loss(dataset: Dataset):
    """BCE + soft Dice on one logit channel (binary), CE + soft Dice on softmax (multi-class)."""
    import torch.nn.functional as F
    from monai.losses import DiceCELoss, DiceLoss

    if dataset.n_classes > 2:
        return DiceCELoss(to_onehot_y=True, softmax=True)
    dice = DiceLoss(sigmoid=True)
    return lambda logits, labels: F.binary_cross_entropy_with_logits(logits, labels) + dice(logits, labels)


def run_peer(dataset: Dataset, data: Path, minutes: float, seed: int = 0) -> dict[str, Any]:
    """The plain MONAI script: train for ``minutes`` of wall time, predict the test images, score them."""
    from monai.networks.nets import BasicUNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    splits = load(dataset, data)
    channels = splits["train"][0]["image"].shape[-1]
    train = [{"image": torch.from_numpy(image.transpose(2, 0, 1).copy()),
              "label": torch.from_numpy(mask[None].astype(np.float32))}
             for s in splits["train"] for image, mask in planes(zscore(s["image"]), s["mask"])]
    transforms = peer_transforms(dataset)
    transforms.set_random_state(seed=seed)
    outputs = 1 if dataset.n_classes == 2 else dataset.n_classes
    model = BasicUNet(spatial_dims=2, in_channels=channels, out_channels=outputs,
                      features=(32, 32, 64, 128, 256, 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = peer_loss(dataset)
    budget, steps, order, batch_size = minutes * 60, 0, [], dataset.batch
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < budget:
        progress = elapsed / budget
        lr = 1e-3 * min(1.0, (steps + 1) / 11) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if len(order) < batch_size:
            order += rng.permutation(len(train)).tolist()
        batch = [transforms(train[order.pop()]) for _ in range(batch_size)]
        images = torch.stack([torch.as_tensor(b["image"]) for b in batch]).float()
        labels = torch.stack([torch.as_tensor(b["label"]) for b in batch]).float()
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    trained = time.perf_counter() - started
    model.eval()
    with torch.inference_mode():
        predictions = [peer_predict(dataset, model, zscore(s["image"])) for s in splits["test"]]
    return {"steps": steps, "train_seconds": trained, **score(dataset, splits["test"], predictions)}


def peer_predict(dataset: Dataset, model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Class ids for one z-scored image (``H x W x C``) or volume (``X x Y x Z x C``, slice by slice along the last
    voxel axis, each slice padded to a multiple of 16 and cropped back)."""
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference

    size = (dataset.size, dataset.size)
    if dataset.volumes:
        x = torch.from_numpy(image.transpose(2, 3, 0, 1).copy())  # slices x C x H x W
        (h, w), (ph, pw) = x.shape[2:], (-x.shape[2] % 16, -x.shape[3] % 16)
        logits = model(F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)))
        return classes(logits[:, :, ph // 2: ph // 2 + h, pw // 2: pw // 2 + w]).permute(1, 2, 0).numpy()
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    if dataset.thin:
        logits = sliding_window_inference(x, size, 4, model, overlap=0.5, mode="gaussian")
    else:
        small = F.interpolate(x, size, mode="bilinear", align_corners=False)
        logits = F.interpolate(model(small), x.shape[2:], mode="bilinear", align_corners=False)
    return classes(logits)[0].numpy()


def classes(logits: torch.Tensor) -> torch.Tensor:
    """``N x K x H x W`` logits as ``N x H x W`` int64 class ids: sigmoid > 0.5 for one channel, else argmax."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits[:, 0]) > 0.5).long()
    return logits.argmax(dim=1)


def score(dataset: Dataset, test: list[dict[str, Any]], predictions: list[np.ndarray]) -> dict[str, Any]:
    """Dice per image (per case, in 3D for volumes) and pooled; for multi-class sets the mean over foreground
    classes, and each class as ``dice_c<k>_mean`` / ``dice_c<k>_pooled``."""
    from medseg.metrics import MetricAccumulator

    accumulator = MetricAccumulator(n_classes=dataset.n_classes, with_hd95=False)
    for sample, labels in zip(test, predictions):
        accumulator.add(sample["id"], labels, sample["mask"], sample["region"])
    summary, rows = accumulator.summary(), accumulator.rows()
    result = {"dice_mean": summary["dice"]["mean"], "dice_pooled": summary["dice"]["pooled"],
              "per_image": {row.id: row.dice for row in rows}}
    for k in range(1, dataset.n_classes) if dataset.n_classes > 2 else ():
        column = f"dice_c{k}"
        result.update({f"{column}_mean": summary[column]["mean"], f"{column}_pooled": summary[column]["pooled"],
                       f"per_image_{column}": {row.id: row.per_class[k - 1].dice for row in rows}})
    return result


def run_medseg(dataset: Dataset, data: Path, minutes: float, work: Path, variant: str = "",
               overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """`medseg train --data D --budget B` (plus ``--set`` overrides for a variant); scored from the same test
    masks."""
    from medseg.run.folder import run_contract
    from medseg.run.history import read_history
    from medseg.run.weights import load_checkpoint
    from medseg.inference.predictor import Predictor

    run = work / "runs" / f"{dataset.name}_{minutes:g}min{'_' + variant if variant else ''}"
    if run.exists():
        shutil.rmtree(run)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "medseg", "train", "--data", str(data), "--budget", f"{minutes}m",
                           "--out", str(run), *[arg for o in overrides for arg in ("--set", o)]],
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"medseg failed on {dataset.name}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    contract = run_contract(run)
    info = load_checkpoint(run / f"{contract.selected}.safetensors").info
    splits = load(dataset, data)
    if dataset.volumes:
        predictions = predict_volumes_cli(run, data, splits["test"])
    else:
        predictor = Predictor.from_run(run)
        predictions = [predictor.predict(s["image"]).astype(np.int64) for s in splits["test"]]
    plan = [{"key": c.key, "value": c.value, "reason": c.reason} for c in contract.plan.choices]
    history = read_history(run)
    training = history[-1].seconds - sum(row.val_seconds for row in history)
    planned = 1 / contract.plan.seconds_per_step if contract.plan.seconds_per_step else None
    return {"steps": info.step, "train_seconds": info.seconds, "wall_seconds": wall, "plan": plan,
            "steps_per_second": history[-1].step / training, "planned_steps_per_second": planned,
            "threshold": contract.inference.threshold, "postprocess": contract.inference.postprocess.describe(),
            **score(dataset, splits["test"], predictions)}


def predict_volumes_cli(run: Path, data: Path, test: list[dict[str, Any]]) -> list[np.ndarray]:
    """`medseg predict RUN DATA/imagesTs --out RUN/test_predictions`, read back as label volumes
    (``<case>.nii.gz``, which must keep the image's shape and affine)."""
    import nibabel as nib

    out = run / "test_predictions"
    done = subprocess.run([sys.executable, "-m", "medseg", "predict", str(run), str(data / "imagesTs"),
                           "--out", str(out)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"medseg predict failed on {data}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    predictions = []
    for sample in test:
        path, image = out / f"{sample['id']}{NIFTI}", data / "imagesTs" / f"{sample['id']}{NIFTI}"
        if not path.is_file():
            raise SystemExit(f"medseg predict wrote no {path.name} in {out}")
        if not np.allclose(nib.load(str(path)).affine, nib.load(str(image)).affine, atol=1e-3):
            raise SystemExit(f"{path}: affine differs from the image's")
        predictions.append(read_volume(path, label=True))
    return predictions


def code_version(system: str, overrides: tuple[str, ...]) -> str:
    """What a cell's figure depends on, as a digest: this script (the peer, and how medseg is run), a variant's
    overrides and, for medseg, the source of the medseg package it runs."""
    digest = hashlib.sha256(Path(__file__).read_bytes() + "\n".join(overrides).encode())
    if system != "peer":
        import medseg

        for path in sorted(Path(medseg.__file__).parent.rglob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cell(work: Path, dataset: Dataset, system: str, minutes: float,
         overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """One measurement, cached in ``work/cells``; ``system`` is peer, medseg or medseg:VARIANT."""
    from medseg.files import atomic_write_text

    path = work / "cells" / f"{dataset.name}_{system.replace(':', '-')}_{minutes:g}.json"
    code = code_version(system, overrides)
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("code") == code:  # cells written before cells recorded their code have none
            return cached
        print(f"{path}: measured by other code; measuring again", flush=True)
    data = prepare(dataset, work)
    print(f"{time.strftime('%H:%M:%S')} {dataset.name}: {system} for {minutes:g} min", flush=True)
    variant = system.partition(":")[2]
    result = (run_peer(dataset, data, minutes) if system == "peer"
              else run_medseg(dataset, data, minutes, work, variant, overrides))
    result.update(dataset=dataset.name, system=system, minutes=minutes, overrides=list(overrides), code=code)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2))
    print(f"    pooled Dice {result['dice_pooled']:.4f}, mean {result['dice_mean']:.4f}, {result['steps']} steps",
          flush=True)
    if result.get("planned_steps_per_second"):
        actual, planned = result["steps_per_second"], result["planned_steps_per_second"]
        print(f"    steps per second: {actual:.3f} actual, {planned:.3f} planned (actual / planned "
              f"{actual / planned:.2f})", flush=True)
    return result


def summarise(cells: list[dict[str, Any]], budgets: list[float],
              tests: dict[str, list[str]] | None = None) -> tuple[list[dict[str, Any]], str]:
    """Rows per dataset, the Markdown report and the targets."""
    top = max(budgets)
    ordered = sorted(cells, key=lambda c: (c["dataset"], c["minutes"], c["system"]))
    names = sorted({c["dataset"] for c in cells})
    blocks = []
    binary = [c for c in ordered if DATASETS[c["dataset"]].n_classes == 2]
    if binary:
        blocks.append(["| dataset | budget (min) | system | pooled Dice | mean Dice | steps |",
                       "|---|---:|---|---:|---:|---:|"]
                      + [f"| {c['dataset']} | {c['minutes']:g} | {c['system']} | {c['dice_pooled']:.4f} | "
                         f"{c['dice_mean']:.4f} | {c['steps']} |" for c in binary])
    blocks += [class_table(DATASETS[name], [c for c in ordered if c["dataset"] == name])
               for name in names if DATASETS[name].n_classes > 2]
    rows, tables = [], {}
    for name in names:
        row = target(DATASETS[name], {(c["system"], c["minutes"]): c for c in cells if c["dataset"] == name}, top)
        if row:
            rows.append(row)
            tables.setdefault(target_header(DATASETS[name], top), []).append(target_line(row))
    blocks += [[header, "|---|---:|---:|---:|---|---:|---|", *body] for header, body in tables.items()]
    lines = "\n\n".join("\n".join(block) for block in blocks).splitlines()
    return rows, "\n".join(lines + plans(cells, top) + split_notes(tests or {})) + "\n"


def class_table(dataset: Dataset, cells: list[dict[str, Any]]) -> list[str]:
    """A multi-class set's cells: Dice per foreground class and their mean, each averaged over the test cases."""
    names = " | ".join(f"Dice {name}" for name in dataset.classes)
    lines = [f"| dataset | budget (min) | system | {names} | mean foreground Dice | steps |",
             "|---|---:|---|" + "---:|" * (dataset.n_classes + 1)]
    for c in cells:
        values = " | ".join(f"{c[f'dice_c{k}_mean']:.4f}" for k in range(1, dataset.n_classes))
        lines.append(f"| {c['dataset']} | {c['minutes']:g} | {c['system']} | {values} | {c['dice_mean']:.4f} | "
                     f"{c['steps']} |")
    return lines


def metric_name(dataset: Dataset) -> str:
    """How the tables name the metric the dataset's targets compare."""
    averaging = "pooled" if dataset.metric == "dice_pooled" else "mean"
    return f"{averaging} {'foreground ' if dataset.n_classes > 2 else ''}Dice"


def target(dataset: Dataset, mine: dict[tuple[str, float], dict[str, Any]], top: float) -> dict[str, Any] | None:
    """The targets at the largest budget: medseg >= peer + 0.01 (and >= the dataset's floor), and the smallest
    medseg budget reaching the peer (target: half the largest)."""
    peer, medseg = mine.get(("peer", top)), mine.get(("medseg", top))
    if not peer or not medseg:
        return None
    key = dataset.metric
    gain = medseg[key] - peer[key]
    reached = [m for (system, m), c in sorted(mine.items(), key=lambda kv: kv[0][1])
               if system == "medseg" and c[key] >= peer[key]]
    first = reached[0] if reached else None
    met = gain >= 0.01 and (dataset.floor is None or medseg[key] >= dataset.floor)
    return {"dataset": dataset.name, "metric": key, "peer": peer[key], "medseg": medseg[key], "gain": gain,
            "accuracy_target_met": met, "medseg_minutes_to_peer": first,
            "time_target_met": first is not None and first <= top / 2}


def target_header(dataset: Dataset, top: float) -> str:
    floor = f", >= {dataset.floor:g}" if dataset.floor is not None else ""
    return (f"| dataset | peer's {metric_name(dataset)} at {top:g} min | medseg at {top:g} min | gain | "
            f"target +0.01{floor} | smallest medseg budget reaching the peer's {top:g}-min Dice | "
            f"target <= {top / 2:g} min |")


def target_line(row: dict[str, Any]) -> str:
    first = row["medseg_minutes_to_peer"]
    return (f"| {row['dataset']} | {row['peer']:.4f} | {row['medseg']:.4f} | {row['gain']:+.4f} | "
            f"{'met' if row['accuracy_target_met'] else '**missed**'} | "
            f"{f'{first:g} min' if first else 'not reached'} | {'met' if row['time_target_met'] else '**missed**'} |")


def split_notes(tests: dict[str, list[str]]) -> list[str]:
    """The test cases of the splits the benchmark draws itself."""
    return [line for name, ids in tests.items()
            for line in ("", f"Test cases of {name} ({len(ids)}, seeded 80/20 split of the labelled cases, "
                             f"seed {DATASETS[name].split_seed}): {', '.join(ids)}.")]


def plans(cells: list[dict[str, Any]], top: float) -> list[str]:
    """The plan medseg chose for each dataset at the largest budget, every choice with its reason."""
    lines = []
    for c in sorted(cells, key=lambda c: c["dataset"]):
        if c["system"] != "medseg" or c["minutes"] != top:
            continue
        lines += ["", f"Plan for {c['dataset']} at {top:g} min (threshold chosen on validation: {c['threshold']}, "
                  f"post-processing: {c['postprocess']}):", ""]
        lines += [f"- `{choice['key']}` = `{json.dumps(choice['value'])}`: {choice['reason']}" for choice in c["plan"]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--budgets", default="5,15", help="minutes, for both systems")
    parser.add_argument("--half", action=argparse.BooleanOptionalAction, default=True,
                        help="also run medseg at half the largest budget (the time-to-reach target)")
    parser.add_argument("--systems", default="peer,medseg", help="which systems to run now (cells are cached)")
    parser.add_argument("--variant", help="run only medseg, with --set overrides, as the system medseg:VARIANT")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--work", default="/tmp/medseg-accuracy", help="data copies, runs and cached cells")
    parser.add_argument("--out", default="accuracy.json")
    parser.add_argument("--markdown", help="also write the tables here")
    args = parser.parse_args()
    work = Path(args.work)
    budgets = [float(b) for b in args.budgets.split(",")]
    cells, tests = [], {}
    for name in args.datasets.split(","):
        dataset = DATASETS[name]
        if not (SHARED / name / ("labelsTr" if dataset.volumes else "images")).is_dir():
            raise SystemExit(f"{SHARED / name} not found: the benchmark needs ../shared/data")
        if dataset.split_seed is not None:
            tests[name] = list(test_ids(dataset))
        runs = [(system, minutes) for minutes in budgets for system in ("peer", "medseg")]
        if args.half:
            runs.append(("medseg", max(budgets) / 2))
        if args.variant:
            cells += [cell(work, dataset, f"medseg:{args.variant}", minutes, tuple(args.overrides))
                      for minutes in budgets]
            continue
        cells += [cell(work, dataset, system, minutes) for system, minutes in runs
                  if system in args.systems.split(",")]
    rows, markdown = summarise(cells, budgets, tests)
    header = (f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
              f"budgets {args.budgets} min (+ medseg at half the largest).\n\n")
    print(markdown)
    Path(args.out).write_text(json.dumps({"cells": cells, "targets": rows, "test_cases": tests}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(header + markdown)


if __name__ == "__main__":
    main()
