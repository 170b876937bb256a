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

``--variant NAME --set KEY=VALUE ...`` runs medseg once more with overrides, as the system ``medseg:NAME``; such
cells are listed for diagnosis (e.g. what a wider network would have scored) and never count for the targets.

Both are scored by the same code on the test split: per-image and pooled Dice, inside the field of view where the
dataset has one. Every (dataset, system, budget) cell is saved under ``--work/cells`` as it finishes, so an
interrupted run resumes; timings are only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
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
    test_ids: tuple[str, ...] | None = None  # None: the dataset's split.csv


DATASETS = {
    "isbi2012_em": Dataset("isbi2012_em", thin=True, upright=False,
                           test_ids=tuple(f"{i:02d}" for i in range(24, 30))),
    "busi": Dataset("busi", thin=False, upright=True),
    "chase_db1": Dataset("chase_db1", thin=True, upright=False),
}


def prepare(dataset: Dataset, work: Path) -> Path:
    """A copy of the shared dataset in ``work`` whose split.csv holds the benchmark's train/test split."""
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


def zscore(image: np.ndarray) -> np.ndarray:
    return (image - image.mean(axis=(0, 1))) / np.maximum(image.std(axis=(0, 1)), 1e-6)


def peer_transforms(dataset: Dataset):
    from monai import transforms as T

    keys = ["image", "label"]
    steps = [T.RandSpatialCropd(keys, (256, 256), random_size=False) if dataset.thin
             else T.Resized(keys, (256, 256), mode=("bilinear", "nearest")),
             T.RandFlipd(keys, prob=0.5, spatial_axis=1)]
    if not dataset.upright:
        steps += [T.RandFlipd(keys, prob=0.5, spatial_axis=0), T.RandRotate90d(keys, prob=0.5)]
    steps += [T.RandAffined(keys, prob=0.5, rotate_range=(math.radians(15),), scale_range=(0.15, 0.15),
                            mode=("bilinear", "nearest"), padding_mode="reflection"),
              T.RandScaleIntensityd(["image"], factors=0.1, prob=0.5),
              T.RandShiftIntensityd(["image"], offsets=0.1, prob=0.5)]
    return T.Compose(steps)


def run_peer(dataset: Dataset, data: Path, minutes: float, seed: int = 0) -> dict[str, Any]:
    """The plain MONAI script: train for ``minutes`` of wall time, predict the test images, score them."""
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceLoss
    from monai.networks.nets import BasicUNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    splits = load_split(data)
    channels = splits["train"][0]["image"].shape[2]
    train = [{"image": torch.from_numpy(zscore(s["image"]).transpose(2, 0, 1).copy()),
              "label": torch.from_numpy(s["mask"][None].astype(np.float32))} for s in splits["train"]]
    transforms = peer_transforms(dataset)
    transforms.set_random_state(seed=seed)
    model = BasicUNet(spatial_dims=2, in_channels=channels, out_channels=1, features=(32, 32, 64, 128, 256, 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dice = DiceLoss(sigmoid=True)
    budget, steps, order = minutes * 60, 0, []
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < budget:
        progress = elapsed / budget
        lr = 1e-3 * min(1.0, (steps + 1) / 11) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if len(order) < 4:
            order += rng.permutation(len(train)).tolist()
        batch = [transforms(train[order.pop()]) for _ in range(4)]
        images = torch.stack([torch.as_tensor(b["image"]) for b in batch]).float()
        labels = torch.stack([torch.as_tensor(b["label"]) for b in batch]).float()
        logits = model(images)
        loss = F.binary_cross_entropy_with_logits(logits, labels) + dice(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    trained = time.perf_counter() - started
    model.eval()
    predictions = []
    with torch.inference_mode():
        for sample in splits["test"]:
            x = torch.from_numpy(zscore(sample["image"]).transpose(2, 0, 1).copy())[None]
            if dataset.thin:
                logits = sliding_window_inference(x, (256, 256), 4, model, overlap=0.5, mode="gaussian")
            else:
                small = F.interpolate(x, (256, 256), mode="bilinear", align_corners=False)
                logits = F.interpolate(model(small), x.shape[2:], mode="bilinear", align_corners=False)
            predictions.append((torch.sigmoid(logits)[0, 0] > 0.5).numpy().astype(np.int64))
    return {"steps": steps, "train_seconds": trained, **score(splits["test"], predictions)}


def score(test: list[dict[str, Any]], predictions: list[np.ndarray]) -> dict[str, Any]:
    from medseg.metrics import MetricAccumulator

    accumulator = MetricAccumulator(n_classes=2, with_hd95=False)
    for sample, labels in zip(test, predictions):
        accumulator.add(sample["id"], labels, sample["mask"], sample["region"])
    dice = accumulator.summary()["dice"]
    return {"dice_mean": dice["mean"], "dice_pooled": dice["pooled"],
            "per_image": {row["id"]: row["dice"] for row in accumulator.rows()}}


def run_medseg(dataset: Dataset, data: Path, minutes: float, work: Path, variant: str = "",
               overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """`medseg train --data D --budget B` (plus ``--set`` overrides for a variant); scored from the same test
    masks."""
    from medseg.engine.checkpoint import load_checkpoint, run_contract
    from medseg.engine.inference import Predictor

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
    splits = load_split(data)
    predictor = Predictor.from_run(run)
    predictions = [predictor.predict(s["image"]).astype(np.int64) for s in splits["test"]]
    plan = [{"key": c.key, "value": c.value, "reason": c.reason} for c in contract.plan.choices]
    return {"steps": info.step, "train_seconds": info.seconds, "wall_seconds": wall, "plan": plan,
            "threshold": contract.inference.threshold, "postprocess": contract.inference.postprocess.describe(),
            **score(splits["test"], predictions)}


def cell(work: Path, dataset: Dataset, system: str, minutes: float,
         overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """One measurement, cached in ``work/cells``; ``system`` is peer, medseg or medseg:VARIANT."""
    path = work / "cells" / f"{dataset.name}_{system.replace(':', '-')}_{minutes:g}.json"
    if path.is_file():
        return json.loads(path.read_text())
    data = prepare(dataset, work)
    print(f"{time.strftime('%H:%M:%S')} {dataset.name}: {system} for {minutes:g} min", flush=True)
    variant = system.partition(":")[2]
    result = (run_peer(dataset, data, minutes) if system == "peer"
              else run_medseg(dataset, data, minutes, work, variant, overrides))
    result.update(dataset=dataset.name, system=system, minutes=minutes, overrides=list(overrides))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"    pooled Dice {result['dice_pooled']:.4f}, mean {result['dice_mean']:.4f}, {result['steps']} steps",
          flush=True)
    return result


def summarise(cells: list[dict[str, Any]], budgets: list[float]) -> tuple[list[dict[str, Any]], str]:
    """Rows per dataset, the Markdown report and the targets."""
    rows, lines = [], []
    top = max(budgets)
    lines += ["| dataset | budget (min) | system | pooled Dice | mean Dice | steps |", "|---|---:|---|---:|---:|---:|"]
    for c in sorted(cells, key=lambda c: (c["dataset"], c["minutes"], c["system"])):
        lines.append(f"| {c['dataset']} | {c['minutes']:g} | {c['system']} | {c['dice_pooled']:.4f} | "
                     f"{c['dice_mean']:.4f} | {c['steps']} |")
    lines += ["", ("| dataset | peer's pooled Dice at 15 min | medseg at 15 min | gain | target +0.01 | "
                   "smallest medseg budget reaching the peer's 15-min Dice | target <= 7.5 min |"),
              "|---|---:|---:|---:|---|---:|---|"]
    for name in sorted({c["dataset"] for c in cells}):
        mine = {(c["system"], c["minutes"]): c for c in cells if c["dataset"] == name}
        peer, medseg = mine.get(("peer", top)), mine.get(("medseg", top))
        if not peer or not medseg:
            continue
        gain = medseg["dice_pooled"] - peer["dice_pooled"]
        reached = [m for (system, m), c in sorted(mine.items(), key=lambda kv: kv[0][1])
                   if system == "medseg" and c["dice_pooled"] >= peer["dice_pooled"]]
        first = reached[0] if reached else None
        rows.append({"dataset": name, "peer": peer["dice_pooled"], "medseg": medseg["dice_pooled"], "gain": gain,
                     "accuracy_target_met": gain >= 0.01, "medseg_minutes_to_peer": first,
                     "time_target_met": first is not None and first <= top / 2})
        lines.append(f"| {name} | {peer['dice_pooled']:.4f} | {medseg['dice_pooled']:.4f} | {gain:+.4f} | "
                     f"{'met' if gain >= 0.01 else '**missed**'} | {f'{first:g} min' if first else 'not reached'} | "
                     f"{'met' if first is not None and first <= top / 2 else '**missed**'} |")
    return rows, "\n".join(lines + plans(cells, top)) + "\n"


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
    cells = []
    for name in args.datasets.split(","):
        if not (SHARED / name / "images").is_dir():
            raise SystemExit(f"{SHARED / name} not found: the benchmark needs ../shared/data")
        dataset = DATASETS[name]
        runs = [(system, minutes) for minutes in budgets for system in ("peer", "medseg")]
        if args.half:
            runs.append(("medseg", max(budgets) / 2))
        if args.variant:
            cells += [cell(work, dataset, f"medseg:{args.variant}", minutes, tuple(args.overrides))
                      for minutes in budgets]
            continue
        cells += [cell(work, dataset, system, minutes) for system, minutes in runs
                  if system in args.systems.split(",")]
    rows, markdown = summarise(cells, budgets)
    header = (f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
              f"budgets {args.budgets} min (+ medseg at half the largest).\n\n")
    print(markdown)
    Path(args.out).write_text(json.dumps({"cells": cells, "targets": rows}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(header + markdown)


if __name__ == "__main__":
    main()
