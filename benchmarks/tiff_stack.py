"""Loading TIFF stacks: time and memory to list, decode and train a few steps on a synthetic image/label stack
pair of N frames of 1024x1024 uint8, for several N, each in a fresh process.

    python benchmarks/tiff_stack.py --frames 50,100,200,500,1000,2000 --out tiff_stack.json

Linear loading means seconds per frame stay flat as N grows, and peak memory stays bounded by ``data.cache_gb``
(plus one sample). The script uses only the API older medseg versions share (``load_items``, ``load_sample``,
``train``), so the same file measures the code before a change (``PYTHONPATH=<old checkout>/src``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 1024


def write_stack(folder: Path, frames: int, size: int = SIZE) -> Path:
    """``train-volume.tif`` and ``train-labels.tif`` (discs on noise), written page by page."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[:size, :size]
    with tifffile.TiffWriter(folder / "train-volume.tif", bigtiff=True) as volume, \
            tifffile.TiffWriter(folder / "train-labels.tif", bigtiff=True) as labels:
        for _ in range(frames):
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            disc = (ys - cy) ** 2 + (xs - cx) ** 2 < (size // 8) ** 2
            image = (rng.random((size, size)) * 80 + 100 * disc).astype(np.uint8)
            volume.write(image, photometric="minisblack", contiguous=True)
            labels.write((disc * 255).astype(np.uint8), photometric="minisblack", contiguous=True)
    return folder


def child(folder: str, cache_gb: float) -> None:
    """One measurement, printed as JSON: list items, build the training store (decode every frame once), train
    3 steps (256 patches) -- the store is built again inside train, as a user's run does."""
    from medseg.config import Config
    from medseg.data.datasets import load_items
    from medseg.workflow import train

    result = {}
    started = time.perf_counter()
    items = load_items(folder, "tiff-stack")
    result["frames"] = len(items)
    result["list_seconds"] = time.perf_counter() - started
    config = Config()
    config.data.root, config.data.format = folder, "tiff-stack"
    config.data.val_fraction, config.data.cache_gb, config.data.patch_size = 0.001, cache_gb, 256
    config.model.widths = [8, 16, 32, 64]
    config.train.iterations, config.train.steps_per_epoch, config.train.batch_size = 3, 3, 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run:
        train(config, Path(run) / "run")
    result["train_seconds"] = time.perf_counter() - started
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", default="50,100,200,500,1000,2000")
    parser.add_argument("--cache-gb", type=float, default=1.0)
    parser.add_argument("--workdir", default=None, help="where the stacks are written (kept for reuse)")
    parser.add_argument("--out", default="tiff_stack.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.cache_gb)
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="medseg-tiff-"))
    rows = []
    for frames in [int(n) for n in args.frames.split(",")]:
        folder = workdir / f"stack_{frames}"
        if not (folder / "train-labels.tif").is_file():
            write_stack(folder, frames)
        out = subprocess.run([sys.executable, __file__, "--child", str(folder), "--cache-gb", str(args.cache_gb)],
                             capture_output=True, text=True)
        line = next((text for text in out.stdout.splitlines() if text.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{frames} frames failed:\n{out.stderr[-2000:]}")
        row = json.loads(line[len("RESULT "):])
        row["train_ms_per_frame"] = 1000 * row["train_seconds"] / frames
        rows.append(row)
        print(f"{frames:>6} frames: list {row['list_seconds']:.2f} s, train (load all + 3 steps) "
              f"{row['train_seconds']:.1f} s = {row['train_ms_per_frame']:.1f} ms/frame, peak RSS "
              f"{row['peak_rss_gb']:.2f} GB", flush=True)
    Path(args.out).write_text(json.dumps({"cache_gb": args.cache_gb, "size": SIZE, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
