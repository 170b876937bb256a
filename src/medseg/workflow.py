"""The one train path, from a request to an evaluated run: open the run folder (the one place that decides
resume, under the folder's lock), load the config once, list the dataset once, plan, train one run or every
fold, evaluate on the test split. `medseg train`, `medseg plan`, studies and the demo all come through here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal, Sequence

from medseg.claims import shard_order, try_claim
from medseg.config import Config, leaf_keys, load_config, merge, save_config, validate_config
from medseg.data.datasets import Classes, Item, default_class_names, find_classes, load_items, load_sample, split_items
from medseg.data.fingerprint import Fingerprint, compute_fingerprint, spread, volume_facts
from medseg.data.readers import Reader
from medseg.errors import MedsegError
from medseg.inference.evaluate import EvaluationSummary, evaluate
from medseg.log import get_logger, log_to_file
from medseg.models import get_entry
from medseg.plan import Plan, PlanInputs, make_plan
from medseg.run.folder import RunFolder
from medseg.training.callbacks import Callback
from medseg.training.components import input_channels, prepare_data, resolve_classes, select_device
from medseg.training.crossval import CrossValidationSummary, summarise_folds
from medseg.training.distributed import DistributedContext, init_distributed, shutdown_distributed
from medseg.training.schedule import Clock
from medseg.run.history import HistoryRow
from medseg.training.trainer import TrainResult, default_callbacks, fit_run, tensorboard_installed

ResumeRule = Literal["new", "resume", "auto"]  # a fresh folder only; an interrupted run only; whichever it holds
HELD_OUT = 0.2  # the share of cases a plan holds out for testing when the dataset has no labelled test split


@dataclass(frozen=True)
class Hooks:
    """What a library caller or a test adds to a run: observers, a per-epoch function, a clock."""

    callbacks: Sequence[Callback] | None = None  # replaces the default observers
    on_epoch_end: Callable[[int, HistoryRow], None] | None = None
    clock: Clock | None = None


@dataclass(frozen=True)
class TrainRequest:
    """Everything `medseg train` parsed, in one typed value. ``config`` replaces ``config_path`` + ``overrides``
    (library callers); ``planning`` False trains the config as it is (``--no-plan``)."""

    out: Path | None = None  # the run folder (None: runs/<dataset>, numbered)
    config_path: Path | None = None
    overrides: tuple[str, ...] = ()
    config: Config | None = None
    budget_minutes: float | None = None
    plan_path: Path | None = None
    planning: bool = True
    resume: ResumeRule = "new"
    cross_validate: bool = False
    shard: tuple[int, int] | None = None
    evaluate: bool = True
    hooks: Hooks = field(default_factory=Hooks)


@dataclass
class RunOutcome:
    run_dir: Path
    plan: Plan | None
    train: TrainResult | None  # a single run (None: it was already finished)
    cross_validation: CrossValidationSummary | None  # every fold (None while a sharded run is unfinished)
    test: EvaluationSummary | None


@dataclass
class _Prepared:
    """A request once its folder is open: the config (loaded once), the dataset's items (listed once), the plan
    and the fingerprint, and whether the run resumes."""

    folder: RunFolder
    config: Config
    items: list[Item]
    plan: Plan | None
    fingerprint: Fingerprint | None
    resume: bool
    finished: bool


def train_run(request: TrainRequest) -> RunOutcome:
    """Train (or resume) what ``request`` asks for and evaluate it on its test split, when there is one."""
    context = init_distributed()
    if not context.is_main:
        get_logger().setLevel("WARNING")
    try:
        return _run(request, context)
    finally:
        if context.enabled:
            shutdown_distributed()


def _run(request: TrainRequest, context: DistributedContext) -> RunOutcome:
    """Open the folder (a single run holds its lock throughout; folds are claimed one by one), prepare once,
    train one run or every fold, then test."""
    if request.cross_validate and request.out is None:
        raise MedsegError("--out", "cross-validation needs a run folder (--out)")
    config = None if request.out else _load_config(request)
    folder = RunFolder(request.out or default_run_dir(config.data.root))
    claim = folder.lock("medseg train") if context.is_main and not request.cross_validate else None
    try:
        prepared = _prepare(request, folder, config, context)
        result, summary = _train(prepared, request, context)
    finally:
        if claim is not None:
            claim.release()
    test = _test(prepared, request) if context.is_main else None
    return RunOutcome(folder.path, prepared.plan, result, summary, test)


def _resume_mode(folder: RunFolder, rule: ResumeRule) -> str:
    """``fresh``, ``resume`` or ``finished``: what the folder holds, checked against what the request allows."""
    if rule == "new" and (folder.started or folder.finished):
        raise MedsegError(folder.path, "already holds a run; use --resume to continue it or choose another --out")
    if rule == "resume" and not folder.started:
        raise MedsegError(folder.path, f"no {folder.checkpoint.name} to resume from")
    if folder.finished and rule == "auto":
        return "finished"
    return "resume" if folder.started else "fresh"


def _load_config(request: TrainRequest) -> Config:
    return request.config if request.config is not None else load_config(request.config_path, request.overrides)


def _prepare(request: TrainRequest, folder: RunFolder, config: Config | None,
             context: DistributedContext) -> _Prepared:
    """The config, items, plan and fingerprint of a fresh run, or those the folder recorded (a cross-validation
    folder keeps its own, so shards, resumes and the summary agree)."""
    if request.cross_validate:
        mode = "resume" if folder.config.is_file() else "fresh"
    else:
        mode = context.all_gather(_resume_mode(folder, request.resume))[0]  # rank 0's reading of the folder
    if mode != "fresh":
        recorded = load_config(folder.config)
        items = _items(recorded) if mode == "resume" else []
        if request.cross_validate and request.config is not None and _with_classes(request.config,
                                                                                   items)[0] != recorded:
            raise MedsegError(folder.path, "holds a cross-validation with another config; choose another --out")
        plan = Plan.load(folder.plan) if folder.plan.is_file() else None
        fingerprint = Fingerprint.load(folder.fingerprint) if folder.fingerprint.is_file() else None
        return _Prepared(folder, recorded, items, plan, fingerprint, mode == "resume", mode == "finished")
    config = config or _load_config(request)
    _check_config(config)
    if request.cross_validate and request.budget_minutes is not None:
        request = replace(request, budget_minutes=request.budget_minutes / config.data.folds)  # a share per fold
    config, items, plan, fingerprint = _plan(request, config, context)
    return _Prepared(folder, config, items, plan, fingerprint, False, False)


def _items(config: Config) -> list[Item]:
    if not config.data.root:
        raise MedsegError("data.root", "no dataset given (--data DIR)")
    return load_items(config.data.root, config.data.format, config.data.slice_axis)


def _plan(request: TrainRequest, config: Config,
          context: DistributedContext) -> tuple[Config, list[Item], Plan | None, Fingerprint | None]:
    """Classes, items and (unless ``--no-plan``) the plan applied under the user's own values."""
    started = time.perf_counter()
    fixed = user_keys(config) - {"data.root"}
    items = _items(config)
    config, classes = _with_classes(config, items)
    plan, fingerprint = None, None
    if request.plan_path is not None:
        plan = Plan.load(request.plan_path)
        beside = Path(request.plan_path).with_name(RunFolder(".").fingerprint.name)
        fingerprint = Fingerprint.load(beside) if beside.is_file() else None
    elif request.planning:
        source = classes.source if classes is not None else "the config"
        plan, fingerprint = context.all_gather(
            _make_plan(config, items, fixed, source, request.budget_minutes, time.perf_counter() - started)
            if context.is_main else None)[0]
    if plan is not None:
        config = apply_plan(config, plan)
    if request.budget_minutes is not None and (plan is None or request.plan_path is not None):
        config.train.budget_minutes = request.budget_minutes  # no plan made now: the budget as it is
    if plan is not None and config.data.slice_axis is not None and any(i.axis != config.data.slice_axis
                                                                       for i in items if i.case):
        items = _items(config)  # the plan slices the volumes along another axis
    return config, items, plan, fingerprint


def _with_classes(config: Config, items: list[Item]) -> tuple[Config, Classes | None]:
    """``config`` with the dataset's classes filled in where it leaves them open (and the classes found)."""
    if config.data.n_classes is not None and (config.data.class_names is not None or config.data.n_classes == 2):
        return config, None
    classes = find_classes(config.data.root, items)
    return resolve_classes(config, classes), classes


def user_keys(config: Config) -> frozenset[str]:
    """The dotted config keys the user set (in a config file, with flags or in code): the plan leaves them alone."""
    return frozenset(leaf_keys(config.model_dump(exclude_unset=True)))


def apply_plan(config: Config, plan: Plan) -> Config:
    """The plan's choices under every value the user set."""
    return validate_config(merge(plan.mapping(), config.model_dump(exclude_unset=True)))


@dataclass(frozen=True)
class PlannedData:
    """What planning saw of the dataset: its fingerprint and the split sizes of the config's (or held-out) split."""

    fingerprint: Fingerprint
    n_train: int
    n_val: int
    test_fraction: float  # data.test_fraction the plan sets (the config's, or HELD_OUT)


def fingerprint_dataset(config: Config, items: list[Item], hold_out: bool = True) -> PlannedData:
    """The fingerprint of the dataset's labelled non-test ``items`` (at most a spread-out sample of them) and the
    split sizes. With ``hold_out``, a dataset without a labelled test split has :data:`HELD_OUT` of its cases held
    out first, as training will."""
    data = config.data
    has_test = any(item.split == "test" for item in items)
    test_fraction = HELD_OUT if hold_out and not has_test and not data.test_fraction else data.test_fraction
    splits = split_items(items, data.val_fraction, test_fraction, data.split_seed, data.fold, data.folds)
    labelled = splits.train + splits.val
    if not labelled:
        raise MedsegError(data.root, "no labelled training images to plan from")
    channels = input_channels(config, splits)
    with Reader() as reader:
        samples = (load_sample(labelled[i], channels, data.n_classes, reader) for i in spread(len(labelled)))
        fingerprint = compute_fingerprint(samples, data.n_classes, volume_facts(labelled))
    return PlannedData(fingerprint, len(splits.train), len(splits.val), test_fraction)


def _make_plan(config: Config, items: list[Item], fixed: frozenset[str], classes_source: str,
               budget_minutes: float | None, spent_seconds: float) -> tuple[Plan, Fingerprint]:
    """Fingerprint the items and plan for the budget (or, without one, for the config's step count)."""
    started = time.perf_counter()
    planned = fingerprint_dataset(config, items, hold_out="data.test_fraction" not in fixed)
    names = tuple(config.data.class_names or default_class_names(config.data.n_classes))
    inputs = PlanInputs(data=str(config.data.root), classes=names, classes_source=classes_source,
                        n_train=planned.n_train, n_val=planned.n_val, test_fraction=planned.test_fraction,
                        budget_minutes=budget_minutes, device=str(select_device(config.train.device)), fixed=fixed,
                        base=config)
    plan = make_plan(planned.fingerprint, inputs, spent_seconds=spent_seconds + time.perf_counter() - started)
    get_logger().info("%s", plan.table())
    return plan, planned.fingerprint


def plan_dataset(config: Config, budget_minutes: float, out: Path | None = None) -> tuple[Plan, Fingerprint]:
    """`medseg plan`: fingerprint the dataset and plan for ``budget_minutes``; with ``out``, write the plan there
    and the fingerprint beside it."""
    started = time.perf_counter()
    fixed = user_keys(config) - {"data.root"}
    items = _items(config)
    config, classes = _with_classes(config, items)
    source = classes.source if classes is not None else "the config"
    plan, fingerprint = _make_plan(config, items, fixed, source, budget_minutes,
                                   time.perf_counter() - started)
    if out is not None:
        plan.save(out)
        fingerprint.save(out.with_name(RunFolder(".").fingerprint.name))
    return plan, fingerprint


def _check_config(config: Config) -> None:
    """Problems that need no data: fail before decoding anything."""
    if not config.data.root:
        raise MedsegError("data.root", "no dataset given (--data DIR)")
    get_entry(config.model.name)
    config.model.zoo_options()
    if config.train.tensorboard and not tensorboard_installed():
        raise MedsegError("train.tensorboard", "needs the tensorboard package (pip install 'medseg[tensorboard]')")
    if config.train.select == "best" and config.data.fold == "all":
        raise MedsegError("train.select", "'best' needs validation images; --fold all has none")


def _fit(prepared: _Prepared, hooks: Hooks, context: DistributedContext) -> TrainResult:
    """Write the run's config and plan (a fresh run), then train or resume it, logging to ``train.log``."""
    folder, config = prepared.folder, prepared.config
    handler = log_to_file(folder.log) if context.is_main else None
    try:
        if context.is_main and not prepared.resume:
            save_config(config, folder.config)
            if prepared.plan is not None:
                prepared.plan.save(folder.plan)
        data = prepare_data(config, prepared.items, prepared.fingerprint)
        if context.is_main:
            data.record.fingerprint.save(folder.fingerprint)
        callbacks = hooks.callbacks if hooks.callbacks is not None else default_callbacks(config, hooks.on_epoch_end)
        return fit_run(config, folder.path, data, context, callbacks, prepared.plan, prepared.resume, hooks.clock)
    finally:
        if handler is not None:
            get_logger().removeHandler(handler)
            handler.close()


def _test(prepared: _Prepared, request: TrainRequest) -> EvaluationSummary | None:
    """The test-split evaluation of a finished run (or cross-validation), when it has a test split."""
    folder = prepared.folder
    if not request.evaluate or not folder.finished or not folder.read_contract().data.splits.test:
        return None
    return evaluate(folder.path, prepared.config.data.root, folder.evaluation, split="test",
                    items=prepared.items or None)


# -- cross-validation ------------------------------------------------------------------------------------------

def fold_config(config: Config, fold: int) -> Config:
    fold_config = config.model_copy(deep=True)
    fold_config.data.fold = fold
    return fold_config


def _train(prepared: _Prepared, request: TrainRequest,
           context: DistributedContext) -> tuple[TrainResult | None, CrossValidationSummary | None]:
    """One run (unless it is finished), or every fold and, once all are done, their out-of-fold summary."""
    if not request.cross_validate:
        return (None if prepared.finished else _fit(prepared, request.hooks, context)), None
    folder, config = prepared.folder, prepared.config
    if not prepared.resume:
        save_config(config, folder.config)
        if prepared.plan is not None:
            prepared.plan.save(folder.plan)
    _train_folds(prepared, request, context)
    if not all(folder.fold(k).finished for k in range(config.data.folds)):
        get_logger().info("not every fold is finished yet; run again (without --shard) to summarise")
        return None, None
    return None, summarise_folds(folder.path, config)


def _train_folds(prepared: _Prepared, request: TrainRequest, context: DistributedContext) -> None:
    log = get_logger()
    folds = prepared.config.data.folds
    for fold in shard_order(folds, request.shard):
        folder = prepared.folder.fold(fold)
        claim = try_claim(folder.path, f"fold {fold}")
        if claim is None:
            log.info("fold %d is being trained by another process", fold)
            continue
        with claim:
            mode = _resume_mode(folder, "auto")
            if mode == "finished":
                continue
            resume = mode == "resume"
            log.info("%s fold %d of %d", "resuming" if resume else "training", fold, folds)
            config = load_config(folder.config) if resume else fold_config(prepared.config, fold)
            fold_run = _Prepared(folder, config, prepared.items, prepared.plan, prepared.fingerprint, resume, False)
            _fit(fold_run, request.hooks, context)


# -- the library API -------------------------------------------------------------------------------------------

def train(config: Config | None, run_dir: str | Path, resume: bool = False,
          on_epoch_end: Callable[[int, HistoryRow], None] | None = None, clock: Clock | None = None,
          callbacks: Sequence[Callback] | None = None) -> TrainResult:
    """Train ``config`` as it is (no planning) in ``run_dir``, or with ``resume`` continue the run there; the
    notebook API (``medseg.train``). ``callbacks`` replaces the default observers; ``clock`` wall time (tests)."""
    if config is None and not resume:
        raise ValueError("config is required unless resuming")
    request = TrainRequest(out=Path(run_dir), config=config, planning=False, resume="resume" if resume else "new",
                           evaluate=False, hooks=Hooks(callbacks, on_epoch_end, clock))
    return train_run(request).train


def train_folds(config: Config, run_dir: str | Path,
                shard: tuple[int, int] | None = None) -> CrossValidationSummary | None:
    """Cross-validate ``config`` as it is in ``run_dir`` (resuming what is there); None while folds remain."""
    request = TrainRequest(out=Path(run_dir), config=config, planning=False, resume="auto", cross_validate=True,
                           shard=shard, evaluate=False)
    return train_run(request).cross_validation


def default_run_dir(data: str | Path) -> Path:
    """``runs/<dataset folder name>``, numbered when taken."""
    base = Path("runs") / Path(data).resolve().name
    candidate, number = base, 2
    while candidate.exists():
        candidate, number = base.with_name(f"{base.name}-{number}"), number + 1
    return candidate
