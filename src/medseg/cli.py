"""The `medseg` command: parses arguments, calls the library, turns MedsegError into one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from medseg.errors import MedsegError

if TYPE_CHECKING:
    from medseg.study.compare import StudySpec
    from medseg.workflow import RunOutcome, TrainRequest

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


def parse_duration(text: str) -> float:
    """Minutes from ``90s``, ``15m``, ``1.5h`` or a plain number of minutes."""
    units = {"s": 1 / 60, "m": 1.0, "h": 60.0}
    raw = text.strip().lower()
    scale = units.get(raw[-1:], None)
    try:
        minutes = float(raw[:-1] if scale else raw) * (scale or 1.0)
    except ValueError:
        raise MedsegError("--budget", f"expected a duration like 90s, 15m or 1.5h, got {text!r}") from None
    if minutes <= 0:
        raise MedsegError("--budget", f"must be positive, got {text!r}")
    return minutes


RUN_FLAG_KEYS = {  # the destination of each run flag -> the config key it sets
    "data": "data.root", "model": "model.name", "epochs": "train.epochs", "iterations": "train.iterations",
    "batch_size": "train.batch_size", "patch_size": "data.patch_size", "lr": "optim.lr", "seed": "train.seed",
    "val_fraction": "data.val_fraction", "device": "train.device", "fold": "data.fold", "folds": "data.folds",
    "init": "train.init",
}


def run_overrides(args: argparse.Namespace) -> list[str]:
    """The dotted config overrides the run flags of `train`, `compare` and `plan` stand for (flags left unset, or
    that the command lacks, are skipped), then every ``--set``: the same flags give the same overrides in every
    command. ``--budget`` is not among them (see :func:`parse_duration`)."""
    values = {key: getattr(args, dest, None) for dest, key in RUN_FLAG_KEYS.items()}
    overrides = [f"{key}={json.dumps(value)}" for key, value in values.items() if value is not None]
    if getattr(args, "deterministic", False):
        overrides.append("train.deterministic=true")
    return overrides + list(args.set or [])


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` -> ``(i, N)`` with 0 <= i < N."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise MedsegError("--shard", f"expected i/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise MedsegError("--shard", f"shard {index} is outside 0..{count - 1}")
    return index, count


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

    from medseg.workflow import train_run

    request = train_request(args)
    if args.nproc and args.nproc > 1 and request.cross_validate:
        raise MedsegError("--nproc", "DDP trains one run at a time: with --folds, run one fold per command "
                                     "(--fold i) or shard the folds across processes (--shard i/N)")
    if args.nproc and args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(args.nproc, args.argv)
    _print_outcome(train_run(request))
    return 0


def train_request(args: argparse.Namespace) -> "TrainRequest":
    """The parsed `medseg train` command as one typed request."""
    from medseg.workflow import TrainRequest

    cross_validate, shard = args.folds is not None and args.fold is None, parse_shard(args.shard)
    if shard and not cross_validate:
        raise MedsegError("--shard", "shards split the folds of a cross-validation (--folds K without --fold)")
    if args.resume and args.out:
        raise MedsegError("--resume", "give the run folder once: --resume RUN_DIR continues the run in RUN_DIR")
    if args.no_plan and args.plan:
        raise MedsegError("--no-plan", "--plan gives a plan to train; --no-plan trains the config without one")
    return TrainRequest(
        out=Path(args.resume or args.out) if args.resume or args.out else None,
        config_path=Path(args.config) if args.config else None, overrides=tuple(run_overrides(args)),
        budget_minutes=parse_duration(args.budget) if args.budget else None,
        plan_path=Path(args.plan) if args.plan else None, planning=not args.no_plan,
        resume="resume" if args.resume else ("auto" if cross_validate else "new"),
        cross_validate=cross_validate, shard=shard)


def _print_outcome(outcome: "RunOutcome") -> None:
    if outcome.train is not None:
        result = outcome.train
        print(f"{result.steps_run} steps in {result.seconds / 60:.1f} min; using the {result.selected} weights; "
              f"run folder {outcome.run_dir}")
    elif outcome.cross_validation is not None:
        summary = outcome.cross_validation
        dice = summary.metrics["dice"]
        print(f"cross-validation over {summary.folds} folds: out-of-fold Dice {dice['mean']:.4f} +/- "
              f"{dice['std']:.4f} (pooled {dice['pooled']:.4f}); run folder {outcome.run_dir}")
    else:
        print(f"not every fold is finished; run the command again without --shard to summarise {outcome.run_dir}")


def _cmd_plan(args: argparse.Namespace) -> int:
    from medseg.config import load_config
    from medseg.workflow import plan_only

    config = load_config(args.config, run_overrides(args))
    plan_only(config, parse_duration(args.budget), Path(args.out))  # planning logs the plan's table
    print(f"wrote {args.out} (edit it, then: medseg train --plan {args.out} --data {args.data})")
    return 0


def _inference_overrides(args: argparse.Namespace) -> dict:
    """Inference settings given on the command line (None = the run's own)."""
    from medseg.run.contract import PostprocessSpec

    postprocess = None
    if args.no_postprocess:
        postprocess = PostprocessSpec()
    elif args.largest_component or args.min_size or args.fill_holes:
        postprocess = PostprocessSpec(args.largest_component, args.min_size or 0, args.fill_holes)
    return {"tta": True if args.tta else None, "threshold": args.threshold, "overlap": args.overlap,
            "postprocess": postprocess}


def _model_source(args: argparse.Namespace, run: str | None) -> str:
    """The run folder or the --weights file: exactly one of them."""
    if args.weights and run:
        raise MedsegError("--weights", f"give a run folder ({run}) or --weights, not both")
    if not (args.weights or run):
        raise MedsegError("run", "give a run folder or --weights FILE")
    return args.weights or run


def _folds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise MedsegError("--folds", f"expected comma-separated fold numbers, got {text!r}") from None


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medseg.inference.evaluate import evaluate

    evaluate(_model_source(args, args.run), args.data, args.out, split=args.split, fmt=args.format,
             empty=args.empty, backend=args.backend, device=args.device, folds=_folds(args.folds),
             prune_depth=args.prune_depth, **_inference_overrides(args))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from medseg.inference.predictor import Predictor
    from medseg.inference.predict import predict_paths
    from medseg.run.folder import RunFolder

    paths = list(args.paths)
    if args.weights:
        if paths and Path(paths[0]).is_dir() and RunFolder(paths[0]).weights("best_model").is_file():
            raise MedsegError("--weights", f"give a run folder ({paths[0]}) or --weights, not both")
        run, inputs = None, paths
    else:
        run, inputs = paths[0], paths[1:]
    if not inputs:
        raise MedsegError("inputs", "no images to predict (medseg predict RUN_DIR IMAGE... --out DIR)")
    predictor = Predictor.from_run(_model_source(args, run), args.backend, args.device, _folds(args.folds),
                                   args.prune_depth, args.batch_size or 4, **_inference_overrides(args))
    predict_paths(predictor, inputs, args.out, save_probabilities=args.probabilities, save_overlays=args.overlays,
                  save_uncertainty=args.uncertainty)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from medseg.inference.export import export_model

    path = export_model(_model_source(args, args.run), args.format, args.out)
    print(f"wrote {args.format} model to {path}")
    return 0


def _serving(command: str) -> None:
    """The serving packages, or a one-line error."""
    import importlib.util

    for package in ("fastapi", "uvicorn", "multipart"):
        if importlib.util.find_spec(package) is None:
            raise MedsegError(command, f"needs the serving packages ({package} is missing): pip install "
                                       "'medseg[serve]'")


def _token(token_file: str | None) -> str | None:
    """The bearer token in ``token_file`` (None without one); a token shorter than 16 characters is refused."""
    if not token_file:
        return None
    try:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise MedsegError(token_file, f"cannot read the token file ({exc.strerror})") from None
    if len(token) < 16:
        raise MedsegError(token_file, "the token is shorter than 16 characters")
    return token


def _cmd_serve(args: argparse.Namespace) -> int:
    _serving("serve")
    import uvicorn

    from medseg.inference.predictor import Predictor
    from medseg.serve.app import ServeSettings, create_app

    token = _token(args.token_file)
    predictor = Predictor.from_run(args.run, args.backend, args.device, _folds(args.folds))
    settings = ServeSettings(max_queue=args.max_queue, timeout_s=args.timeout,
                             max_body_bytes=int(args.max_body_mb * 2**20), max_pixels=int(args.max_megapixels * 1e6),
                             batch_size=args.batch_size or (8 if args.device.startswith("cuda") else 1),
                             batch_wait_ms=args.batch_wait_ms, token=token)
    uvicorn.run(create_app(predictor, settings), host=args.host, port=args.port, log_level="info",
                timeout_graceful_shutdown=int(args.timeout) + 5, proxy_headers=args.proxy_headers)
    return 0


def _cmd_label(args: argparse.Namespace) -> int:
    _serving("label")
    import uvicorn

    from medseg.label.app import Labelling, create_label_app
    from medseg.label.workspace import Workspace
    from medseg.run.folder import RunFolder
    from medseg.serve.app import ServeSettings

    if args.budget and args.iterations:
        raise MedsegError("--iterations", "give a --budget or a number of --iterations, not both")
    token = _token(args.token_file)
    workspace = Workspace(args.dir, tuple(n.strip() for n in args.classes.split(",")) if args.classes else None)
    changes: dict[str, object] = {}
    if args.budget:
        changes.update(budget_minutes=parse_duration(args.budget), iterations=None)
    if args.iterations:
        changes.update(iterations=args.iterations, budget_minutes=None)
    if args.run and workspace.state.model is None:
        RunFolder(args.run).read_contract()  # a finished run, or a one-line error
        changes["model"] = str(Path(args.run).resolve())
    workspace.update(**changes)
    settings = ServeSettings(max_body_bytes=int(args.max_body_mb * 2**20), token=token)
    app = create_label_app(Labelling(workspace, args.set or []), settings)
    address = f"labelling {args.dir}: open http://{args.host}:{args.port}/ in a browser (Ctrl-C stops)"

    class Announced(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            print(address, flush=True)  # once it listens

    Announced(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")).run()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from medseg.demo import run_demo

    run_demo(args.out, minutes=args.minutes)
    return 0


def study_spec(args: argparse.Namespace) -> "StudySpec":
    """The parsed `medseg compare` command as the study's protocol."""
    from medseg.config import load_config
    from medseg.study.compare import StudySpec, parse_models

    preset = load_config(args.config).study if args.config else None
    if args.models:
        models = parse_models(args.models)
    elif preset and preset.models:
        models = list(preset.models)
    else:
        raise MedsegError("--models", "give --models or a --config with study.models")
    return StudySpec(data=args.data, models=models, seeds=_seeds(args.seeds) or list(preset.seeds if preset else [0]),
                     config=args.config, overrides=run_overrides(args),
                     budget_minutes=parse_duration(args.budget) if args.budget else None)


def _seeds(text: str | None) -> list[int]:
    try:
        return [int(s) for s in (text or "").split(",") if s.strip()]
    except ValueError:
        raise MedsegError("--seeds", f"expected comma-separated integers, got {text!r}") from None


def _cmd_compare(args: argparse.Namespace) -> int:
    from medseg.study.compare import run_study

    rows = run_study(study_spec(args), args.out, parse_shard(args.shard))
    if rows is None:
        print(f"this shard is done; run the command again without --shard to finish and report {args.out}")
        return 0
    print((Path(args.out) / "results.md").read_text())
    print(f"{len(rows)} models; report: {Path(args.out) / 'report.html'}")
    return 0


def _cmd_suggest(args: argparse.Namespace) -> int:
    from medseg.label.suggest import suggest_for_run

    if args.n < 1:
        raise MedsegError("-n", f"must be at least 1, got {args.n}")
    suggestions = suggest_for_run(args.run, args.data, args.n, args.out, args.format, args.device)
    if not suggestions:
        print(f"every image of {args.data} has a complete mask: nothing to suggest")
        return 0
    width = max(len(s.id) for s in suggestions)
    for s in suggestions:
        print(f"{s.rank:>3}  {s.id:<{width}}  {s.score:.3f}  {s.reason}")
    print(f"wrote {args.out}")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from medseg.data.datasets import check_dataset

    report = check_dataset(args.dir, args.format, args.n_classes)
    volumes = f" (slices of {report.n_cases} volumes)" if report.n_cases else ""
    print(f"{report.root} ({report.format}): {report.n_items} images{volumes}")
    names = ", ".join(f"{k} {name}" for k, name in enumerate(report.classes.names))
    print(f"  classes:       {report.classes.count} ({report.classes.source}): {names}")
    print(f"  splits:        {report.splits}")
    print(f"  sizes (WxH):   {dict(list(report.sizes.items())[:8])}{' ...' if len(report.sizes) > 8 else ''}")
    print(f"  channels:      {report.channels}")
    print(f"  mask values:   {report.mask_values} (class ids after decoding)")
    print(f"  foreground:    {100 * report.foreground_fraction:.2f}% of labelled pixels")
    labels = report.labels
    print(f"  labels:        {labels['dense']} dense, {labels['partial']} partial ({100 * report.labelled_fraction:.1f}%"
          f" of their pixels labelled), {labels['none']} without a mask")
    if report.unlabelled:
        shown = ", ".join(report.unlabelled[:10]) + (" ..." if len(report.unlabelled) > 10 else "")
        print(f"  unlabelled:    {shown} (in no split: never trained on; `medseg suggest` ranks them)")
    return 0


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from medseg.data.datasets import convert

    count = convert(args.src, args.format, args.out, args.n_classes)
    print(f"wrote {count} images in the folder format to {args.out}")
    return 0


def _fold(text: str) -> int | str:
    return "all" if text == "all" else int(text)


def _add_inference_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", help="a weights file instead of a run folder")
    parser.add_argument("--folds", help="cross-validation runs: the folds to ensemble, e.g. 0,2 (default: all)")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"],
                        help="inference engine (onnxruntime exports the model once and caches it)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threshold", type=float, help="foreground threshold (default: the run's, chosen on "
                                                        "validation)")
    parser.add_argument("--overlap", type=float, help="tile overlap (0..0.9, default 0.5)")
    parser.add_argument("--tta", action="store_true", help="average over flips (test-time augmentation)")
    parser.add_argument("--no-postprocess", action="store_true",
                        help="skip the post-processing the run chose on validation")
    parser.add_argument("--largest-component", action="store_true", help="keep the largest connected component")
    parser.add_argument("--min-size", type=int, help="remove objects smaller than this many pixels")
    parser.add_argument("--fill-holes", action="store_true", help="fill holes in predicted objects")
    parser.add_argument("--prune-depth", type=int, help="UNet++ only: run the sub-network of depth 1..4")


def _add_config_flags(parser: argparse.ArgumentParser, budget_help: str, budget_default: str | None = None) -> None:
    """The flags of every command that plans or trains: --config, --budget, --device and --set."""
    parser.add_argument("--config", help="YAML config (see configs/)")
    parser.add_argument("--budget", default=budget_default, metavar="DURATION",
                        help=f"{budget_help}: 90s, 15m, 1.5h or minutes")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key, e.g. optim.name=sgd")


def _add_run_flags(parser: argparse.ArgumentParser, budget_help: str, one_run: bool) -> None:
    """The flags of every command that trains (`train`; `compare`, whose --models and --seeds replace --model and
    --seed), the same in each; :func:`run_overrides` turns them into config overrides."""
    _add_config_flags(parser, budget_help)
    parser.add_argument("--data", required=not one_run, help="dataset folder (folder format or a supported layout)")
    if one_run:
        parser.add_argument("--model", help="zoo model name (medseg models)")
        parser.add_argument("--seed", type=int)
    parser.add_argument("--epochs", type=int, help="epochs of at least 250 steps (default 50)")
    parser.add_argument("--iterations", type=int, help="total optimizer steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--patch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--val-fraction", type=float)
    parser.add_argument("--deterministic", action="store_true", help="reproducible run to run (CPU)")


def _add_plan_parser(commands: Any) -> None:
    plan = commands.add_parser("plan", help="fingerprint a dataset and plan a training recipe for a time budget")
    plan.add_argument("data", metavar="DIR", help="dataset folder (folder format or a supported layout)")
    plan.add_argument("--out", default="plan.yaml", help="plan file to write (default plan.yaml)")
    _add_config_flags(plan, "training time to plan for (default 15m)", budget_default="15m")
    plan.set_defaults(handler=_cmd_plan)


def _add_train_parser(commands: Any) -> None:
    train = commands.add_parser("train", help="train a model on a dataset folder")
    _add_run_flags(train, "train to this deadline, planned for it unless --no-plan (the schedule follows it)",
                   one_run=True)
    train.add_argument("--no-plan", action="store_true",
                       help="train the config as it is, without planning from the data")
    train.add_argument("--plan", help="a plan file from `medseg plan` (flags and --config still override it)")
    train.add_argument("--out", help="run folder to create (default: runs/<dataset>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    train.add_argument("--init", metavar="RUN", help="start from a trained run's weights (fine-tuning), with its "
                                                     "network, input geometry and split")
    train.add_argument("--folds", type=int, help="cross-validation: train every one of K folds into --out")
    train.add_argument("--fold", type=_fold, help="train only fold i of --folds K; 'all': no validation split")
    train.add_argument("--shard", help="with --folds: this process's share i/N of the folds (others run the rest)")
    train.add_argument("--nproc", type=int, help="launch N processes with torchrun (DDP) on this machine")
    train.set_defaults(handler=_cmd_train)


def _add_inference_parsers(commands: Any) -> None:
    evaluate = commands.add_parser("evaluate", help="score a trained run on a dataset split")
    evaluate.add_argument("run", nargs="?", help="run folder (its selected weights)")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    evaluate.add_argument("--format", default="auto")
    evaluate.add_argument("--out", required=True)
    evaluate.add_argument("--empty", default="perfect", choices=["perfect", "nan"],
                          help="score of an image whose truth and prediction are both empty")
    _add_inference_flags(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

    predict = commands.add_parser("predict", help="segment new images of any size")
    predict.add_argument("paths", nargs="+", metavar="RUN_DIR IMAGE",
                         help="the run folder, then image files, folders or TIFF stacks (with --weights: images)")
    predict.add_argument("--out", required=True)
    predict.add_argument("--batch-size", type=int, help="tiles per forward pass")
    predict.add_argument("--probabilities", action="store_true", help="also write probability maps (TIFF)")
    predict.add_argument("--overlays", action="store_true", help="also write overlay PNGs")
    predict.add_argument("--uncertainty", action="store_true",
                         help="also write where the model is unsure (<name>_uncertainty: the entropy of its mean "
                              "probability, 255 = most unsure; NIfTI for volumes) and each input's score in "
                              "uncertainty.csv")
    _add_inference_flags(predict)
    predict.set_defaults(handler=_cmd_predict)

    export = commands.add_parser("export", help="export a trained model to ONNX or TorchScript")
    export.add_argument("run", nargs="?", help="run folder (its selected weights)")
    export.add_argument("--weights", help="a weights file instead of a run folder")
    export.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    export.add_argument("--out", required=True)
    export.set_defaults(handler=_cmd_export)


def _add_serve_parser(commands: Any) -> None:
    serve = commands.add_parser("serve", help="serve a trained run over HTTP (API and a web page)")
    serve.add_argument("run", help="run folder (a cross-validation run serves its fold ensemble)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    serve.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    serve.add_argument("--folds", help="cross-validation runs: the folds to ensemble (default: all)")
    serve.add_argument("--token-file", help="require 'Authorization: Bearer <token>' with the token in this file")
    serve.add_argument("--max-queue", type=int, default=32, help="requests waiting for the model; more get 503")
    serve.add_argument("--timeout", type=float, default=60.0, help="seconds per request (504 after)")
    serve.add_argument("--max-body-mb", type=float, default=64.0, help="largest upload (413 above)")
    serve.add_argument("--max-megapixels", type=float, default=64.0, help="largest declared image size (413 above)")
    serve.add_argument("--batch-size", type=int, help="same-size requests per forward pass (default: 1, no batching, "
                                                      "on CPU; 8 on CUDA)")
    serve.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits for company")
    serve.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* from a reverse proxy")
    serve.set_defaults(handler=_cmd_serve)


def _add_label_parser(commands: Any) -> None:
    label = commands.add_parser("label", help="label a dataset in the browser: the model proposes, you correct, it "
                                              "retrains in the background")
    label.add_argument("dir", metavar="DIR", help="dataset folder (folder format, nnU-Net raw or the MSD layout)")
    label.add_argument("--run", help="a trained run to start from (its model proposes first)")
    label.add_argument("--budget", metavar="DURATION", help="each training round's time: 90s, 3m (default 3m)")
    label.add_argument("--iterations", type=int, help="train this many steps a round instead of a budget")
    label.add_argument("--classes", help="class names for a folder without masks yet, e.g. lesion or liver,tumour")
    label.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    label.add_argument("--port", type=int, default=8100)
    label.add_argument("--token-file", help="require 'Authorization: Bearer <token>' with the token in this file")
    label.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body (413 above)")
    label.add_argument("--set", action="append", metavar="KEY=VALUE", help="a config key for every training round")
    label.set_defaults(handler=_cmd_label)


def _add_compare_parser(commands: Any) -> None:
    compare = commands.add_parser("compare", help="train, evaluate and compare several models with one protocol")
    _add_run_flags(compare, "training time per run (the schedule follows it)", one_run=False)
    compare.add_argument("--models", help="comma-separated, options as name:key=value (default: study.models)")
    compare.add_argument("--seeds", help="comma-separated training seeds (default: study.seeds, else 0)")
    compare.add_argument("--out", required=True, help="study folder (re-run the command to resume)")
    compare.add_argument("--shard", help="this process's share i/N of the runs (a GPU, machine or Slurm task); "
                                         "a final call without --shard reports")
    compare.set_defaults(handler=_cmd_compare)


def _add_suggest_parser(commands: Any) -> None:
    suggest = commands.add_parser("suggest", help="rank the images without a complete mask: what to label next")
    suggest.add_argument("run", help="run folder (its model, as it predicts)")
    suggest.add_argument("data", metavar="DIR", help="dataset folder (images without a mask, or with a partial one)")
    suggest.add_argument("-n", type=int, default=10, help="how many to suggest (default 10)")
    suggest.add_argument("--out", default="suggestions.csv", help="CSV to write (default suggestions.csv)")
    suggest.add_argument("--format", default="auto")
    suggest.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    suggest.set_defaults(handler=_cmd_suggest)


def _add_data_parsers(commands: Any) -> None:
    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="validate a dataset and print its statistics")
    check.add_argument("dir")
    check.add_argument("--format", default="auto")
    check.add_argument("--n-classes", type=int, default=None, help="default: from dataset.json or the mask values")
    check.set_defaults(handler=_cmd_data_check)
    conv = data.add_parser("convert", help="write a supported layout in the folder format")
    conv.add_argument("src")
    conv.add_argument("--format", required=True, choices=["folder", "nnunet", "tiff-stack", "drive", "isic", "busi"])
    conv.add_argument("--out", required=True)
    conv.add_argument("--n-classes", type=int, default=2)
    conv.set_defaults(handler=_cmd_data_convert)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg", description="2D medical image segmentation with the U-Net family")
    commands = parser.add_subparsers(dest="command", required=True)
    models = commands.add_parser("models", help="list the model zoo with parameters and GFLOPs")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=_cmd_models)
    _add_plan_parser(commands)
    _add_train_parser(commands)
    _add_inference_parsers(commands)
    _add_compare_parser(commands)
    _add_serve_parser(commands)
    _add_suggest_parser(commands)
    _add_label_parser(commands)
    demo = commands.add_parser("demo", help="train and evaluate on built-in synthetic data")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--minutes", type=float, default=1.5, help="training time budget")
    demo.set_defaults(handler=_cmd_demo)
    _add_data_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "predict" and not any(e.startswith("-") for e in extra):
        args.paths += extra  # images after an option: `predict RUN --tta a.png b.png`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
