"""The `medseg` command: parses arguments, calls the library, turns MedsegError into one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from medseg.errors import MedsegError

Handler = Callable[[argparse.Namespace], int]


def _cmd_models(args: argparse.Namespace) -> int:
    from medseg.models import count_gflops, count_parameters, create_model, get_entry, list_models

    rows = []
    for name in list_models():
        model = create_model(name, in_channels=3, out_channels=1)
        entry = get_entry(name)
        rows.append(
            {
                "name": name,
                "params": count_parameters(model),
                "gflops_256": round(count_gflops(model, 3, (256, 256)), 2),
                "summary": entry.summary,
                "source": entry.source,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<24}{'params':>13}{'GFLOPs@256':>12}  description")
    for row in rows:
        print(f"{row['name']:<24}{row['params']:>13,}{row['gflops_256']:>12.2f}  {row['summary']}")
    print("(in_channels=3, out_channels=1, default options; 1 multiply-add = 2 FLOPs)")
    return 0


def _train_config(args: argparse.Namespace):
    from medseg.config import load_config

    overrides = list(args.set or [])
    flags = {
        "data.root": args.data, "model.name": args.model, "train.epochs": args.epochs,
        "train.iterations": args.iterations, "train.batch_size": args.batch_size, "data.patch_size": args.patch_size,
        "optim.lr": args.lr, "train.seed": args.seed, "data.val_fraction": args.val_fraction,
        "train.device": args.device, "data.fold": args.fold, "data.folds": args.folds,
    }
    overrides = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None] + overrides
    if args.deterministic:
        overrides.append("train.deterministic=true")
    return load_config(args.config, overrides)


def _launch_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """Re-run this `medseg train` command under torchrun with ``nproc`` processes on this machine."""
    import subprocess

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "medseg", *rest]
    return subprocess.run(command, check=False).returncode


def _cmd_train(args: argparse.Namespace) -> int:
    import os

    from medseg.engine.train import train

    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(args.nproc, args.argv)

    if args.resume:
        result = train(None, args.resume, resume=True)
    else:
        if not args.out:
            raise MedsegError("--out", "give the run folder to write (or --resume RUN_DIR)")
        result = train(_train_config(args), args.out)
    print(f"best val Dice {result.best_val_dice:.4f} (epoch {result.best_epoch}); run folder {result.run_dir}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medseg.engine.evaluate import evaluate

    evaluate(args.weights or args.run, args.data, args.out, split=args.split, fmt=args.format, empty=args.empty,
             tta=args.tta, device=args.device, postprocess_options=_postprocess_options(args),
             prune_depth=args.prune_depth)
    return 0


def _postprocess_options(args: argparse.Namespace) -> dict:
    return {"largest_component": args.largest_component, "min_size": args.min_size, "fill_holes": args.fill_holes}


def _cmd_predict(args: argparse.Namespace) -> int:
    from medseg.engine.predict import predict_paths

    overrides = {"tta": args.tta, "device": args.device, "threshold": args.threshold, "overlap": args.overlap,
                 "batch_size": args.batch_size}
    predict_paths(args.weights or args.run, args.inputs, args.out, overrides, save_probabilities=args.probabilities,
                  save_overlays=args.overlays, prune_depth=args.prune_depth, backend=args.backend,
                  **_postprocess_options(args))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from medseg.engine.export import export_model

    path = export_model(args.weights or args.run, args.format, args.out)
    print(f"wrote {args.format} model to {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from medseg.demo import run_demo

    run_demo(args.out, minutes=args.minutes)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from medseg.config import load_config
    from medseg.study.compare import StudySpec, parse_models, run_study

    preset = load_config(args.config).study if args.config else None
    if args.models:
        models = parse_models(args.models)
    elif preset and preset.models:
        models = list(preset.models)
    else:
        raise MedsegError("--models", "give --models or a --config with study.models")
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    else:
        seeds = list(preset.seeds) if preset else [0]
    spec = StudySpec(data=args.data, models=models, seeds=seeds, config=args.config,
                     overrides=list(args.set or []), budget_minutes=args.budget_minutes, epochs=args.epochs)
    rows = run_study(spec, args.out)
    print((Path(args.out) / "results.md").read_text())
    print(f"{len(rows)} models; report: {Path(args.out) / 'report.html'}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from medseg.data.datasets import check_dataset

    report = check_dataset(args.dir, args.format, args.n_classes)
    print(f"{report.root} ({report.format}): {report.n_items} images")
    print(f"  splits:        {report.splits}")
    print(f"  sizes (WxH):   {dict(list(report.sizes.items())[:8])}{' ...' if len(report.sizes) > 8 else ''}")
    print(f"  channels:      {report.channels}")
    print(f"  mask values:   {report.mask_values} (class ids after decoding)")
    print(f"  foreground:    {100 * report.foreground_fraction:.2f}% of mask pixels")
    return 0


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from medseg.data.datasets import convert

    count = convert(args.src, args.format, args.out, args.n_classes)
    print(f"wrote {count} images in the folder format to {args.out}")
    return 0


def _add_inference_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", help="a checkpoint file instead of RUN_DIR/best_model.safetensors")
    parser.add_argument("--tta", action="store_true", help="average over flips (test-time augmentation)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--largest-component", action="store_true", help="keep the largest connected component")
    parser.add_argument("--min-size", type=int, default=0, help="remove objects smaller than this many pixels")
    parser.add_argument("--fill-holes", action="store_true", help="fill holes in predicted objects")
    parser.add_argument("--prune-depth", type=int, help="UNet++ only: run the sub-network of depth 1..4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg", description="2D medical image segmentation with the U-Net family")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the model zoo with parameters and GFLOPs")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=_cmd_models)

    train = commands.add_parser("train", help="train a model on a dataset folder")
    train.add_argument("--config", help="YAML config (see configs/)")
    train.add_argument("--data", help="dataset folder (folder format or a supported layout)")
    train.add_argument("--model", help="zoo model name (medseg models)")
    train.add_argument("--out", help="run folder to create")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    train.add_argument("--epochs", type=int)
    train.add_argument("--iterations", type=int, help="total optimizer steps (overrides --epochs)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--patch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--val-fraction", type=float)
    train.add_argument("--fold", type=int, help="use fold i of --folds k as validation")
    train.add_argument("--folds", type=int)
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    train.add_argument("--deterministic", action="store_true", help="reproducible run to run (CPU)")
    train.add_argument("--nproc", type=int, help="launch N processes with torchrun (DDP) on this machine")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. optim.name=sgd")
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser("evaluate", help="score a trained run on a dataset split")
    evaluate.add_argument("run", nargs="?", help="run folder (uses best_model)")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    evaluate.add_argument("--format", default="auto")
    evaluate.add_argument("--out", required=True)
    evaluate.add_argument("--empty", default="perfect", choices=["perfect", "nan"],
                          help="score of an image whose truth and prediction are both empty")
    _add_inference_flags(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

    predict = commands.add_parser("predict", help="segment new images of any size")
    predict.add_argument("run", help="run folder (uses best_model)")
    predict.add_argument("inputs", nargs="+", help="image files, folders or TIFF stacks")
    predict.add_argument("--out", required=True)
    predict.add_argument("--threshold", type=float)
    predict.add_argument("--overlap", type=float, help="tile overlap (0..0.9, default 0.5)")
    predict.add_argument("--batch-size", type=int, help="tiles per forward pass")
    predict.add_argument("--probabilities", action="store_true", help="also write probability maps (TIFF)")
    predict.add_argument("--overlays", action="store_true", help="also write overlay PNGs")
    predict.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                         help="inference engine (onnxruntime exports the model once and caches it)")
    _add_inference_flags(predict)
    predict.set_defaults(handler=_cmd_predict)

    compare = commands.add_parser("compare", help="train, evaluate and compare several models with one protocol")
    compare.add_argument("--data", required=True)
    compare.add_argument("--models", help="comma-separated, options as name:key=value (default: study.models)")
    compare.add_argument("--out", required=True, help="study folder (re-run the command to resume)")
    compare.add_argument("--config", help="base YAML config shared by every model")
    compare.add_argument("--seeds", help="comma-separated training seeds (default: study.seeds, else 0)")
    budget = compare.add_mutually_exclusive_group()
    budget.add_argument("--budget-minutes", type=float, help="training time per run")
    budget.add_argument("--epochs", type=int)
    compare.add_argument("--set", action="append", metavar="KEY=VALUE", help="override the base config")
    compare.set_defaults(handler=_cmd_compare)

    export = commands.add_parser("export", help="export a trained model to ONNX or TorchScript")
    export.add_argument("run", nargs="?", help="run folder (uses best_model)")
    export.add_argument("--weights", help="a checkpoint file instead of RUN_DIR/best_model.safetensors")
    export.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    export.add_argument("--out", required=True)
    export.set_defaults(handler=_cmd_export)

    demo = commands.add_parser("demo", help="train and evaluate on built-in synthetic data")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--minutes", type=float, default=2.0, help="training time budget")
    demo.set_defaults(handler=_cmd_demo)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="validate a dataset and print its statistics")
    check.add_argument("dir")
    check.add_argument("--format", default="auto")
    check.add_argument("--n-classes", type=int, default=2)
    check.set_defaults(handler=_cmd_data_check)
    conv = data.add_parser("convert", help="write a supported layout in the folder format")
    conv.add_argument("src")
    conv.add_argument("--format", required=True, choices=["folder", "nnunet", "tiff-stack", "drive", "isic", "busi"])
    conv.add_argument("--out", required=True)
    conv.add_argument("--n-classes", type=int, default=2)
    conv.set_defaults(handler=_cmd_data_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.handler(args)
    except MedsegError as exc:
        print(f"medseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medseg: interrupted (a training run saved its checkpoint; continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
