"""medseg benchmarks, side by side with MONAI in the same run.

    python benchmarks/run.py --out results.json [--quick] [--markdown docs/performance.md]

Sections: (1) forward throughput of medseg `unet` and MONAI `BasicUNet` at equal widths, with the 3x3-conv
ceiling measured in the same run; (2) end-to-end folder prediction vs a MONAI pipeline; (3) training-step
throughput and data-wait share; (4) huge-image prediction time and peak memory; (5) every zoo model's size, cost
and latency. Every claim is a ratio of two measurements taken in this run. MONAI is a benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medseg.run.weights import WeightsInfo, save_checkpoint
from medseg.run.contract import (DataRecord, InferenceSpec, PostprocessSpec, SplitIds, default_class_names,
                                    new_contract)
from medseg.inference.export import export_model
from medseg.inference.predictor import OnnxBackend, Predictor, prepare_for_inference
from medseg.inference.sliding_window import tile_starts
from medseg.losses import build_loss
from medseg.models import count_gflops, count_parameters, create_model, list_models, measure_latency
from medseg.plan import BF16_GAIN

WIDTHS = (32, 32, 64, 128, 256)
THREADS = torch.get_num_threads()


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def medseg_unet(prepared: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("unet", 1, 1, widths=WIDTHS)
    return prepare_for_inference(model) if prepared else model.eval()


def monai_basic_unet() -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(*WIDTHS, 32)).eval()


def conv_ceiling(repeats: int) -> dict[str, float]:
    """GFLOP/s of one 3x3 conv 64->64 on 4x64x256x256, NCHW and channels_last, and channels_last in bfloat16
    autocast (the precision medseg trains in where the CPU has bfloat16 units): the practical ceilings."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval()
    x = torch.randn(4, 64, 256, 256)
    flops = 2 * 4 * 64 * 64 * 9 * 256 * 256
    result = {}
    with torch.inference_mode():
        result["nchw_gflops"] = flops / timed(lambda: conv(x), repeats) / 1e9
        conv_cl, x_cl = conv.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        result["channels_last_gflops"] = flops / timed(lambda: conv_cl(x_cl), repeats) / 1e9
        with torch.autocast("cpu", dtype=torch.bfloat16):
            result["channels_last_bf16_gflops"] = flops / timed(lambda: conv_cl(x_cl), repeats) / 1e9
    return result


def forward_section(repeats: int, workdir: Path) -> list[dict[str, Any]]:
    """img/s and GFLOP/s for each engine, size and batch."""
    engines: dict[str, Callable[[torch.Tensor], Any]] = {}
    monai = monai_basic_unet()
    plain = medseg_unet(prepared=False)
    fast = medseg_unet(prepared=True)
    save_weights(workdir / "unet.safetensors", plain)
    onnx = OnnxBackend(export_model(workdir / "unet.safetensors", "onnx", workdir / "unet.onnx"), threads=THREADS)
    engines["monai_basicunet_eager"] = lambda x: monai(x)
    engines["medseg_unet_eager_nchw"] = lambda x: plain(x)
    engines["medseg_unet_fast"] = lambda x: fast(x.contiguous(memory_format=torch.channels_last))
    engines["medseg_unet_onnxruntime"] = lambda x: onnx(x)
    rows = []
    for size in (256, 512):
        flops = {"monai": count_gflops(monai, 1, (size, size)), "medseg": count_gflops(plain, 1, (size, size))}
        for batch in (1, 8):
            x = torch.randn(batch, 1, size, size)
            for name, engine in engines.items():
                with torch.inference_mode():
                    seconds = timed(lambda: engine(x), repeats)
                gflop = flops["monai" if name.startswith("monai") else "medseg"] * batch
                rows.append({"engine": name, "size": size, "batch": batch, "seconds": seconds,
                             "img_per_s": batch / seconds, "gflop_per_s": gflop / seconds,
                             "gflop_per_image": gflop / batch})
    return rows


def save_weights(path: Path, model: torch.nn.Module, patch_size: int = 256) -> None:
    """A weights file with the contract training would write (binary, z-score, 256 tiles)."""
    inference = InferenceSpec(n_classes=2, channels=model.spec.in_channels, normalize="zscore", patch_size=patch_size,
                              resize=None, threshold=0.5, tta=False, tta_vflip=True, overlap=0.5,
                              postprocess=PostprocessSpec(), class_names=tuple(default_class_names(2)))
    contract = new_contract(model.spec, inference, DataRecord("", "folder", "", SplitIds((), (), ()), None), None,
                            "best_model")
    save_checkpoint(path, model.state_dict(), contract, WeightsInfo(0, 0, 0.0, 0.0))


def _write_images(folder: Path, count: int, size: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(folder / f"img_{index:03d}.png")


def folder_section(count: int, workdir: Path) -> dict[str, Any]:
    """Read, infer (256 tiles, overlap 0.5, Gaussian), write masks for a folder of 512x512 images."""
    from medseg.inference.predict import predict_paths
    from monai.data import PILWriter
    from monai.inferers import sliding_window_inference
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, NormalizeIntensity

    images = workdir / "images"
    _write_images(images, count, 512)
    model = medseg_unet(prepared=False)
    run = workdir / "run"
    save_weights(run / "best_model.safetensors", model)
    result: dict[str, Any] = {"images": count, "size": 512}
    for backend in ("torch", "onnxruntime"):
        predictor = Predictor.from_run(run, backend)
        predict_paths(predictor, [images / "img_000.png"], workdir / "warmup")
        start = time.perf_counter()
        predict_paths(predictor, [images], workdir / f"out_{backend}")
        result[f"medseg_{backend}_img_per_s"] = count / (time.perf_counter() - start)

    monai = monai_basic_unet()
    load = Compose([LoadImage(image_only=True), EnsureChannelFirst(), NormalizeIntensity()])
    out = workdir / "out_monai"
    out.mkdir(exist_ok=True)

    def monai_pipeline(paths: list[Path]) -> None:
        for path in paths:
            image = load(str(path))[None].float()
            with torch.inference_mode():
                logits = sliding_window_inference(image, (256, 256), 4, monai, overlap=0.5, mode="gaussian")
            mask = ((torch.sigmoid(logits[0]) > 0.5).to(torch.uint8) * 255).numpy()
            writer = PILWriter(output_dtype=np.uint8)
            writer.set_data_array(mask, channel_dim=0)
            writer.write(str(out / path.name), verbose=False)

    files = sorted(images.iterdir())
    monai_pipeline(files[:1])
    start = time.perf_counter()
    monai_pipeline(files)
    result["monai_img_per_s"] = count / (time.perf_counter() - start)
    result["medseg_best_backend"] = max(("torch", "onnxruntime"), key=lambda b: result[f"medseg_{b}_img_per_s"])
    result["ratio"] = result[f"medseg_{result['medseg_best_backend']}_img_per_s"] / result["monai_img_per_s"]
    return result


def train_step_section(repeats: int, workdir: Path) -> dict[str, Any]:
    """One optimizer step (batch 4, 256x256, Adam, BCE + Dice) for each network, then medseg's real training
    loop on decoded in-memory data for its data-wait share."""
    loss_fn = build_loss("bce_dice", 1)
    x = torch.randn(4, 1, 256, 256)
    mask = (torch.rand(4, 256, 256) > 0.7).long()

    def stepper(model: torch.nn.Module, channels_last: bool, bf16: bool = False) -> Callable[[], None]:
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        data = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        if channels_last:
            model.to(memory_format=torch.channels_last)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                output = model(data)
            loss_fn(output, mask).backward()
            optimizer.step()

        return step

    result: dict[str, Any] = {"batch": 4, "size": 256}
    result["monai_s_per_step"] = timed(stepper(monai_basic_unet(), False), repeats)
    result["medseg_nchw_s_per_step"] = timed(stepper(medseg_unet(prepared=False), False), repeats)
    result["medseg_channels_last_s_per_step"] = timed(stepper(medseg_unet(prepared=False), True), repeats)
    result["medseg_bf16_s_per_step"] = timed(stepper(medseg_unet(prepared=False), True, bf16=True), repeats)
    float32 = min(result["medseg_nchw_s_per_step"], result["medseg_channels_last_s_per_step"])
    # medseg trains in bfloat16 where it is BF16_GAIN faster (the plan's rule), else in float32 channels_last
    result["medseg_precision"] = ("bfloat16" if float32 / result["medseg_bf16_s_per_step"] >= BF16_GAIN
                                  else "float32")
    best = result["medseg_bf16_s_per_step"] if result["medseg_precision"] == "bfloat16" else float32
    result["ratio"] = result["monai_s_per_step"] / best
    result["float32_ratio"] = result["monai_s_per_step"] / float32
    result["medseg_img_per_s"] = 4 / best
    result["monai_img_per_s"] = 4 / result["monai_s_per_step"]
    # A training step costs ~3 forward passes (the backward pass computes two gradients per conv).
    result["medseg_step_gflop"] = 3 * 4 * count_gflops(medseg_unet(prepared=False), 1, (256, 256))
    result["medseg_float32_gflop_per_s"] = result["medseg_step_gflop"] / float32
    result["medseg_bf16_gflop_per_s"] = result["medseg_step_gflop"] / result["medseg_bf16_s_per_step"]

    from medseg.config import Config
    from medseg.data.synthetic import make_synthetic_dataset
    from medseg.workflow import train

    data = make_synthetic_dataset(workdir / "train_data", n_images=16, size=256)
    config = Config()
    config.data.root, config.data.patch_size = str(data), 256
    config.model.widths = list(WIDTHS)
    config.train.epochs, config.train.steps_per_epoch, config.train.batch_size = 1, max(3, repeats), 4
    config.train.log_every = 1000
    history = train(config, workdir / "train_run").history
    result["data_wait_share"] = history[-1].data_wait
    return result


HUGE_CHILD = """
import json, os, sys, threading, time
import numpy as np
from medseg.run.contract import InferenceSpec, PostprocessSpec
from medseg.inference.predictor import Predictor, TorchBackend, prepare_for_inference
from medseg.models import create_model

def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

size = int(sys.argv[1])
model = prepare_for_inference(create_model("unet_ultralight", 1, 1))
spec = InferenceSpec(n_classes=2, channels=1, normalize="zscore", patch_size=512, resize=None, threshold=0.5,
                     tta=False, tta_vflip=True, overlap=0.5, postprocess=PostprocessSpec(),
                     class_names=("background", "foreground"))
predictor = Predictor([TorchBackend(model)], spec, batch_size=4)
predictor.predict(np.random.rand(600, 600, 1).astype(np.float32))
image = np.random.default_rng(0).random((size, size, 1), dtype=np.float32)
baseline, peak, running = rss(), [0], [True]

def sample():
    while running[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)

sampler = threading.Thread(target=sample)
sampler.start()
start = time.perf_counter()
result = predictor.predict(image, probabilities=True)
labels, probability = result.labels, result.probabilities
seconds = time.perf_counter() - start
running[0] = False
sampler.join()
peak[0] = max(peak[0], rss())
print(json.dumps({"size": size, "seconds": seconds, "baseline_rss": baseline, "peak_rss": peak[0],
                  "input_bytes": image.nbytes, "output_bytes": labels.nbytes + probability.nbytes}))
"""


def huge_section(sizes: list[int]) -> list[dict[str, Any]]:
    """Each size in a fresh process; `unet_ultralight`, 512 tiles, overlap 0.5. Peak RSS is sampled every 5 ms
    during prediction; 'above input+output' subtracts the RSS before prediction (with the input image already
    in memory, counted once) and the returned label and probability arrays."""
    rows = []
    for size in sizes:
        out = subprocess.run([sys.executable, "-c", HUGE_CHILD, str(size)], capture_output=True, text=True,
                             check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["megapixels"] = size * size / 1e6
        row["tiles"] = len(tile_starts(size, 512, 0.5)) ** 2
        row["seconds_per_tile"] = row["seconds"] / row["tiles"]
        row["seconds_per_mp"] = row["seconds"] / row["megapixels"]
        row["peak_above_io_gb"] = (row["peak_rss"] - row["baseline_rss"] - row["output_bytes"]) / 2**30
        rows.append(row)
    return rows


def zoo_section(repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name in list_models():
        reference = create_model(name, 3, 1)
        model = prepare_for_inference(create_model(name, 3, 1))
        rows.append({"model": name, "params": count_parameters(reference),
                     "gflops_256": count_gflops(reference, 3, (256, 256)),
                     "cpu_ms_256_b1": 1000 * measure_latency(model, 3, (256, 256), repeats=repeats, warmup=1)})
    return rows


def gpu_section(repeats: int) -> dict[str, Any]:
    """CUDA: forward (512x512, batch 1 and 8) in fp32 and AMP, and an AMP training step (batch 4, 256x256), medseg
    `unet` (channels_last, folded BN for inference) vs MONAI `BasicUNet`, cudnn.benchmark on."""
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")

    def sync_timed(fn: Callable[[], Any]) -> float:
        def run() -> None:
            fn()
            torch.cuda.synchronize()
        return timed(run, repeats, warmup=3)

    rows = []
    nets = {"monai_basicunet": monai_basic_unet().to(device),
            "medseg_unet": medseg_unet(prepared=True).to(device)}
    for batch in (1, 8):
        x = torch.randn(batch, 1, 512, 512, device=device)
        for name, net in nets.items():
            for amp in (False, True):
                data = x.contiguous(memory_format=torch.channels_last) if name.startswith("medseg") else x

                def forward() -> None:
                    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                        net(data)

                seconds = sync_timed(forward)
                rows.append({"engine": name, "amp": amp, "size": 512, "batch": batch, "img_per_s": batch / seconds})
    loss_fn = build_loss("bce_dice", 1)
    x = torch.randn(4, 1, 256, 256, device=device)
    mask = (torch.rand(4, 256, 256, device=device) > 0.7).long()
    steps = {}
    for name, net in (("monai_basicunet", monai_basic_unet()), ("medseg_unet", medseg_unet(prepared=False))):
        net = net.to(device).train()
        channels_last = name.startswith("medseg")
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        data = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        optimizer = torch.optim.Adam(net.parameters(), 1e-3)
        scaler = torch.amp.GradScaler("cuda")

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16):
                loss = loss_fn(net(data), mask)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        steps[name] = sync_timed(step)
    return {"device": torch.cuda.get_device_name(), "forward": rows,
            "train_step_s": steps, "train_step_ratio": steps["monai_basicunet"] / steps["medseg_unet"]}


def target(measured: float, goal: float, higher_is_better: bool = True) -> dict[str, Any]:
    met = measured >= goal if higher_is_better else measured <= goal
    return {"measured": round(measured, 4), "target": goal, "met": bool(met)}


def _find(rows: list[dict], **match) -> dict:
    return next(r for r in rows if all(r[k] == v for k, v in match.items()))


def targets(forward: list[dict], ceiling: dict, folder: dict, step: dict, huge: list[dict]) -> dict[str, Any]:
    best_512 = max((r for r in forward if r["size"] == 512 and r["batch"] == 1 and r["engine"].startswith("medseg")),
                   key=lambda r: r["img_per_s"])
    monai_512 = _find(forward, engine="monai_basicunet_eager", size=512, batch=1)
    by_size = {r["size"]: r for r in huge}
    largest, smallest = max(by_size), min(by_size)

    return {
        "forward_512_b1_vs_monai": target(best_512["img_per_s"] / monai_512["img_per_s"], 2.0),
        "forward_512_b1_share_of_conv_ceiling": target(
            best_512["gflop_per_s"] / ceiling["channels_last_gflops"], 0.85),
        "folder_prediction_vs_monai": target(folder["ratio"], 2.0),
        **step_targets(ceiling, step),
        f"huge_{largest}_peak_rss_above_io_gb": target(by_size[largest]["peak_above_io_gb"], 1.5, False),
        f"huge_{largest}_time_per_mp_vs_{smallest}": target(
            by_size[largest]["seconds_per_mp"] / by_size[smallest]["seconds_per_mp"], 1.15, False),
    }


def step_targets(ceiling: dict, step: dict) -> dict[str, Any]:
    """The training step against MONAI's, and against the conv ceiling of the precision medseg trains in."""
    bf16 = step["medseg_precision"] == "bfloat16"
    achieved = step["medseg_bf16_gflop_per_s" if bf16 else "medseg_float32_gflop_per_s"]
    return {"train_step_vs_monai": target(step["ratio"], 1.5),
            "train_step_share_of_conv_ceiling": target(
                achieved / ceiling["channels_last_bf16_gflops" if bf16 else "channels_last_gflops"], 0.8),
            "train_step_float32_share_of_conv_ceiling": target(
                step["medseg_float32_gflop_per_s"] / ceiling["channels_last_gflops"], 0.8)}


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Machine: {results['machine']}", "",
             "| engine | size | batch | img/s | GFLOP/s | share of conv ceiling |", "|---|---:|---:|---:|---:|---:|"]
    ceiling = results["conv_ceiling"]["channels_last_gflops"]
    for r in results["forward"]:
        lines.append(f"| {r['engine']} | {r['size']} | {r['batch']} | {r['img_per_s']:.2f} | "
                     f"{r['gflop_per_s']:.1f} | {100 * r['gflop_per_s'] / ceiling:.0f}% |")
    c = results["conv_ceiling"]
    lines += ["", f"3x3 conv ceiling (64->64, 4x64x256x256): {c['nchw_gflops']:.1f} GFLOP/s NCHW, "
              f"{c['channels_last_gflops']:.1f} GFLOP/s channels_last, {c['channels_last_bf16_gflops']:.1f} GFLOP/s "
              "channels_last in bfloat16 autocast.", ""]
    f = results["folder"]
    lines += [f"Folder of {f['images']} images 512x512 (read, 256 tiles overlap 0.5 Gaussian, write): medseg torch "
              f"{f['medseg_torch_img_per_s']:.2f} img/s, medseg onnxruntime {f['medseg_onnxruntime_img_per_s']:.2f}"
              f" img/s, MONAI {f['monai_img_per_s']:.2f} img/s (ratio {f['ratio']:.2f}).", ""]
    s = results["train_step"]
    lines += [f"Training step (batch 4, 256x256, Adam, BCE + Dice): MONAI {s['monai_s_per_step']:.3f} s, medseg "
              f"NCHW {s['medseg_nchw_s_per_step']:.3f} s, channels_last {s['medseg_channels_last_s_per_step']:.3f} s"
              f", bfloat16 {s['medseg_bf16_s_per_step']:.3f} s; medseg trains in {s['medseg_precision']} here "
              f"(ratio {s['ratio']:.2f}; float32 only {s['float32_ratio']:.2f}); at ~3 forward passes a step, "
              f"{s['medseg_float32_gflop_per_s']:.1f} GFLOP/s float32, {s['medseg_bf16_gflop_per_s']:.1f} bfloat16;"
              f" data-wait share in medseg's training loop "
              f"{100 * s['data_wait_share']:.1f}%.", "",
              "| image | seconds | s/MP | tiles | s/tile | peak RSS above input+output (GB) |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in results["huge"]:
        lines.append(f"| {r['size']}x{r['size']} | {r['seconds']:.1f} | {r['seconds_per_mp']:.2f} | {r['tiles']} | "
                     f"{r['seconds_per_tile']:.3f} | {r['peak_above_io_gb']:.2f} |")
    lines += ["", "| model | params | GFLOPs@256 | CPU ms @256 b1 |", "|---|---:|---:|---:|"]
    for r in results["zoo"]:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['gflops_256']:.2f} | {r['cpu_ms_256_b1']:.1f} |")
    lines += ["", "| target | measured | target | met |", "|---|---:|---:|---|"]
    for name, t in results["targets"].items():
        lines.append(f"| {name} | {t['measured']} | {t['target']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results.json")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and images (same structure)")
    parser.add_argument("--markdown", help="also write the tables to this Markdown file")
    parser.add_argument("--sections", default="cpu", help="cpu (sections 1-5, targets), step (the conv ceiling and "
                        "the training step, their targets), gpu, or a comma-separated list")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    repeats = 3 if args.quick else 10
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {THREADS} threads",
        "quick": args.quick,
    }
    if "gpu" in sections:
        if not torch.cuda.is_available():
            raise SystemExit("--sections gpu needs CUDA")
        print("gpu ...", flush=True)
        results["gpu"] = gpu_section(repeats)
        print(json.dumps(results["gpu"], indent=2))
    if "step" in sections and "cpu" not in sections:
        with tempfile.TemporaryDirectory() as tmp:
            results["conv_ceiling"] = conv_ceiling(repeats)
            results["train_step"] = train_step_section(repeats, Path(tmp))
        results["targets"] = step_targets(results["conv_ceiling"], results["train_step"])
        print(json.dumps(results, indent=2))
    if "cpu" not in sections:
        Path(args.out).write_text(json.dumps(results, indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print("conv ceiling ...", flush=True)
        results["conv_ceiling"] = conv_ceiling(repeats)
        print("forward throughput ...", flush=True)
        results["forward"] = forward_section(repeats, workdir)
        print("folder prediction ...", flush=True)
        results["folder"] = folder_section(12 if args.quick else 50, workdir)
        print("training step ...", flush=True)
        results["train_step"] = train_step_section(repeats, workdir)
        print("huge images ...", flush=True)
        results["huge"] = huge_section([2048, 4096, 8192])
        print("zoo ...", flush=True)
        results["zoo"] = zoo_section(repeats)
    results["targets"] = targets(results["forward"], results["conv_ceiling"], results["folder"],
                                 results["train_step"], results["huge"])
    results["seconds"] = time.perf_counter() - started
    table = markdown(results)
    print(table)
    Path(args.out).write_text(json.dumps(results, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table)
    print(f"wrote {args.out} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
