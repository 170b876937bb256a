"""Peak memory of predicting one volume: `predict_volume` (each slice labelled as it is predicted, so one slice's
probabilities are held at a time) against its peer, the way medseg predicted volumes before (every slice's float32
probabilities kept, stacked, then labelled), on a synthetic 14-class volume of N x 512 x 512 voxels, each cell in
a fresh process.

    python benchmarks/volume_memory.py --slices 150,600 --peer-slices 150,600 --out volume_memory.json

The network is a narrow U-Net (widths 4, 8) with random weights and 14 output classes, applied in 256-px windows
with the default overlap, and every class's largest component kept in 3D, as a trained run's contract may say: its
weights change no array's size, so the memory is the pipeline's. The peak is the child's maximum resident set size
(``ru_maxrss``), the baseline its size with the volume decoded and the model built, before the first slice.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = 14
SIZE = 512


def _predictor():
    from medseg.inference.predictor import Predictor, TorchBackend, prepare_for_inference
    from medseg.models import create_model
    from medseg.run.contract import (DataRecord, InferenceSpec, PostprocessSpec, SplitIds, default_class_names,
                                     new_contract)

    import torch

    torch.manual_seed(0)
    model = prepare_for_inference(create_model("unet", 1, CLASSES, widths=(4, 8)))
    spec = InferenceSpec(n_classes=CLASSES, channels=1, normalize="zscore", patch_size=256, resize=None,
                         threshold=0.5, tta=False, tta_vflip=False, overlap=0.5,
                         postprocess=PostprocessSpec(largest_component=True),
                         class_names=default_class_names(CLASSES), slice_axis=2)
    contract = new_contract(model.spec, spec, DataRecord("", "folder", "", SplitIds((), (), ()), None), None,
                            "final_model")
    return Predictor([TorchBackend(model)], spec, contract)


def _volume(slices: int):
    """A smooth synthetic MR-like volume ``512 x 512 x slices`` (canonical axes, slices along axis 2)."""
    from medseg.data.volumes import Volume

    rng = np.random.default_rng(0)
    x = np.linspace(0, 6 * np.pi, SIZE, dtype=np.float32)
    plane = 500 + 200 * np.sin(x)[:, None] * np.cos(x)[None, :]
    data = np.empty((SIZE, SIZE, slices, 1), np.float32)
    for z in range(slices):
        data[:, :, z, 0] = plane * (1 + 0.3 * np.sin(z / 20)) + rng.normal(0, 20, (SIZE, SIZE)).astype(np.float32)
    return Volume(data, (1.0, 1.0, 1.0), np.eye(4))


def _whole(predictor, volume, uncertainty: bool) -> np.ndarray:
    """The peer: every slice's probabilities kept, then stacked and labelled at once (medseg before #28)."""
    from medseg.data.readers import volume_slice
    from medseg.inference.postprocess import postprocess, to_labels
    from medseg.inference.uncertainty import entropy_map

    statistics = volume.statistics()
    probabilities = [predictor.probabilities(volume_slice(volume, 2, z, 1, "volume"), statistics, (1.0, 1.0))
                     for z in range(volume.data.shape[2])]
    if uncertainty:
        np.stack([entropy_map(p, CLASSES) for p in probabilities])
    stacked = np.stack(probabilities, axis=0 if CLASSES == 2 else 1)
    return np.moveaxis(postprocess(to_labels(stacked, 0.5, CLASSES), predictor.spec.postprocess), 0, 2)


def child(mode: str, slices: int, uncertainty: bool) -> None:
    """One measurement, printed as JSON."""
    import torch

    from medseg.inference.predict import predict_volume

    torch.set_num_threads(1)
    predictor, volume = _predictor(), _volume(slices)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    started = time.perf_counter()
    if mode == "slices":
        labels = predict_volume(predictor, volume, uncertainty=uncertainty).labels
    else:
        labels = _whole(predictor, volume, uncertainty)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"mode": mode, "slices": slices, "uncertainty": uncertainty, "voxels": int(labels.size),
                      "classes": CLASSES, "seconds": round(seconds, 1), "baseline_gib": round(baseline, 2),
                      "peak_gib": round(peak, 2), "working_gib": round(peak - baseline, 2),
                      "labels_shape": list(labels.shape)}))


def run_cell(mode: str, slices: int, uncertainty: bool) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--slices", str(slices)]
    command += ["--uncertainty"] if uncertainty else []
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"mode": mode, "slices": slices, "uncertainty": uncertainty,
                "error": (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", default="600", help="volume depths for predict_volume (comma-separated)")
    parser.add_argument("--peer-slices", default="600", help="volume depths for the peer (comma-separated; "
                        "600 needs about 18 GiB free)")
    parser.add_argument("--out", default="volume_memory.json")
    parser.add_argument("--child", choices=("slices", "whole"), help=argparse.SUPPRESS)
    parser.add_argument("--uncertainty", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, int(args.slices), args.uncertainty)
    cells = [("slices", int(n), u) for n in args.slices.split(",") for u in (False, True)]
    cells += [("whole", int(n), False) for n in args.peer_slices.split(",") if n]
    rows = []
    print(f"{'path':<28} {'volume':>16} {'uncert.':>8} {'peak GiB':>9} {'working GiB':>12} {'seconds':>8}")
    for mode, slices, uncertainty in cells:
        row = run_cell(mode, slices, uncertainty)
        rows.append(row)
        name = "predict_volume (per slice)" if mode == "slices" else "peer (all probabilities)"
        shape = f"{slices}x{SIZE}x{SIZE}"
        if "error" in row:
            print(f"{name:<28} {shape:>16} {str(uncertainty):>8}  failed: {row['error']}")
        else:
            print(f"{name:<28} {shape:>16} {str(uncertainty):>8} {row['peak_gib']:>9.2f} {row['working_gib']:>12.2f} "
                  f"{row['seconds']:>8.1f}")
    Path(args.out).write_text(json.dumps({"classes": CLASSES, "size": SIZE, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
