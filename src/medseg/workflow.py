"""The one train path, from a request to an evaluated run: open the run folder (under its lock), load the config
once, list the dataset once, plan, train one run or every fold, evaluate on the test split. `medseg train`,
studies and the demo all come through here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from medseg.claims import shard_order, try_claim
from medseg.config import Config, load_config, user_keys
from medseg.data.datasets import Item, dataset_items, reslice, with_classes
from medseg.data.fingerprint import Fingerprint
from medseg.errors import MedsegError
from medseg.inference.evaluate import EvaluationSummary, evaluate_predictor
from medseg.inference.predictor import Predictor
from medseg.log import get_logger, log_to_file
from medseg.models import get_entry
from medseg.plan import Plan, PlanChoice, plan_dataset, under_user_values
from medseg.run.folder import Opening, ResumeRule, RunFolder
from medseg.run.history import HistoryRow
from medseg.training.callbacks import Callback
from medseg.training.components import prepare_data
from medseg.training.crossval import CrossValidationSummary, summarise_folds
from medseg.training.init import InitSource
from medseg.distributed import DistributedContext, init_distributed, shutdown_distributed
from medseg.training.schedule import Clock
from medseg.training.trainer import TrainResult, default_callbacks, fit_run, tensorboard_installed


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
class Prepared:
    """A request once its folder is open: the config (loaded once), the dataset's items (listed once), the plan
    and the fingerprint, and what the folder held."""

    folder: RunFolder
    config: Config
    items: list[Item]
    plan: Plan | None
    fingerprint: Fingerprint | None
    opening: Opening

    @property
    def resume(self) -> bool:
        return self.opening == "resume"


def train_run(request: TrainRequest) -> RunOutcome:
    """Train (or resume) what ``request`` asks for and evaluate it on its test split, when there is one. A single
    run holds its folder's lock throughout; the folds of a cross-validation are claimed one by one."""
    context = init_distributed()
    if not context.is_main:
        get_logger().setLevel("WARNING")
    config = None if request.out else _load_config(request)
    folder = RunFolder(request.out) if request.out else RunFolder.default_for(config.data.root)
    claim = folder.lock("medseg train") if context.is_main and not request.cross_validate else None
    try:
        prepared = _prepare(request, folder, config, context)
        result, summary = _train(prepared, request, context)
    finally:
        if claim is not None:
            claim.release()
        if context.enabled:
            shutdown_distributed()
    test = _test(prepared, request) if context.is_main else None
    return RunOutcome(folder.path, prepared.plan, result, summary, test)


def _load_config(request: TrainRequest) -> Config:
    if request.cross_validate and request.out is None:
        raise MedsegError("--out", "cross-validation needs a run folder (--out)")
    return request.config if request.config is not None else load_config(request.config_path, request.overrides)


def _prepare(request: TrainRequest, folder: RunFolder, config: Config | None,
             context: DistributedContext) -> Prepared:
    """A fresh run's config, items, plan and fingerprint, or those the folder recorded (a cross-validation folder
    keeps its own, so shards, resumes and the summary agree)."""
    if request.cross_validate:
        opening = "resume" if folder.config.is_file() else "fresh"
    else:
        opening = context.all_gather(folder.opening(request.resume))[0]  # rank 0's reading of the folder
    if opening != "fresh":
        return _recorded(request, folder, opening)
    config = config or _load_config(request)
    _check_config(config)
    fixed = user_keys(config) - {"data.root", "train.init"}
    init = InitSource.load(config.train.init) if config.train.init else None
    if init is not None:  # RUN's geometry first: its volumes are sliced as RUN sliced them
        config = under_user_values(init.choices(), config)
    config, items, classes = dataset_items(config)
    kept: tuple[PlanChoice, ...] = ()
    if init is not None:
        init.check(config, fixed, items)
        items = init.with_splits(items)
        kept = init.choices(config.data.n_classes)
        fixed |= {choice.key for choice in kept}
    plan, fingerprint = None, None
    if request.plan_path is not None:
        plan = Plan.load(request.plan_path)
        beside = request.plan_path.with_name(folder.fingerprint.name)
        fingerprint = Fingerprint.load(beside) if beside.is_file() else None
    elif request.planning:
        budget = request.budget_minutes
        if request.cross_validate and budget is not None:
            budget /= config.data.folds  # a cross-validation's budget covers every fold
        source = classes.source if classes is not None else "the config"
        plan, fingerprint = context.all_gather(plan_dataset(config, items, fixed, source, budget, kept=kept)
                                               if context.is_main else None)[0]
    config = plan.apply(config) if plan is not None else config  # the plan's choices under the user's values
    if request.budget_minutes is not None and (plan is None or request.plan_path is not None):
        config.train.budget_minutes = request.budget_minutes  # a budget with a ready plan (or none): as it is
    if plan is not None and any(item.slice.axis != config.data.slice_axis for item in items if item.case):
        items = reslice(items, config.data.slice_axis)  # the plan slices the volumes along another axis
    return Prepared(folder, config, items, plan, fingerprint, "fresh")


def _recorded(request: TrainRequest, folder: RunFolder, opening: Opening) -> Prepared:
    recorded = load_config(folder.config)
    items = dataset_items(recorded)[1] if opening == "resume" else []
    if request.cross_validate and request.config is not None and with_classes(request.config, items)[0] != recorded:
        raise MedsegError(folder.path, "holds a cross-validation with another config; choose another --out")
    plan = Plan.load(folder.plan) if folder.plan.is_file() else None
    fingerprint = Fingerprint.load(folder.fingerprint) if folder.fingerprint.is_file() else None
    return Prepared(folder, recorded, items, plan, fingerprint, opening)


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


def _train(prepared: Prepared, request: TrainRequest,
           context: DistributedContext) -> tuple[TrainResult | None, CrossValidationSummary | None]:
    """One run (unless it is finished), or every fold and, once all are done, their out-of-fold summary."""
    if not request.cross_validate:
        return (None if prepared.opening == "finished" else _fit(prepared, request.hooks, context)), None
    folder = prepared.folder
    config = prepared.config
    if not prepared.resume:
        folder.record_inputs(config, prepared.plan)
    for fold in shard_order(config.data.folds, request.shard):
        _train_fold(prepared, fold, request.hooks, context)
    if not all(folder.fold(k).finished for k in range(config.data.folds)):
        get_logger().info("not every fold is finished yet; run again (without --shard) to summarise")
        return None, None
    return None, summarise_folds(folder, config, prepared.items)


def _train_fold(prepared: Prepared, fold: int, hooks: Hooks, context: DistributedContext) -> None:
    """Train, resume or skip one fold, unless another process holds it."""
    folder = prepared.folder.fold(fold)
    claim = try_claim(folder.path, f"fold {fold}")
    if claim is None:
        get_logger().info("fold %d is being trained by another process", fold)
        return
    with claim:
        opening = folder.opening("auto")
        if opening == "finished":
            return
        get_logger().info("%s fold %d of %d", opening.replace("fresh", "training").replace("resume", "resuming"),
                          fold, prepared.config.data.folds)
        config = load_config(folder.config) if opening == "resume" else fold_config(prepared.config, fold)
        _fit(replace(prepared, folder=folder, config=config, opening=opening), hooks, context)


def fold_config(config: Config, fold: int) -> Config:
    fold_config = config.model_copy(deep=True)
    fold_config.data.fold = fold
    return fold_config


def _fit(prepared: Prepared, hooks: Hooks, context: DistributedContext) -> TrainResult:
    """Train or resume the run, logging to ``train.log``; a fresh run first records its config, plan and data
    fingerprint."""
    folder = prepared.folder
    config = prepared.config
    handler = log_to_file(folder.log) if context.is_main else None
    try:
        data = prepare_data(config, prepared.items, prepared.fingerprint)
        if context.is_main and not prepared.resume:
            folder.record_inputs(config, prepared.plan, data.record.fingerprint)
        callbacks = hooks.callbacks if hooks.callbacks is not None else default_callbacks(config, hooks.on_epoch_end)
        return fit_run(config, folder.path, data, context, callbacks, prepared.plan, prepared.resume, hooks.clock)
    finally:
        if handler is not None:
            get_logger().removeHandler(handler)
            handler.close()


def _test(prepared: Prepared, request: TrainRequest) -> EvaluationSummary | None:
    """The test-split evaluation of a finished run (or cross-validation), when it has a test split."""
    folder = prepared.folder
    if not request.evaluate or not folder.finished:
        return None
    predictor = Predictor.from_run(folder.path)
    if not predictor.contract.data.splits.test:
        return None
    items = prepared.items or dataset_items(prepared.config)[1]  # a finished run's folder lists none
    return evaluate_predictor(predictor, items, prepared.config.data.root, folder.evaluation, run=str(folder.path))


# -- the library API and `medseg plan` -------------------------------------------------------------------------

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


def plan_only(config: Config, budget_minutes: float, out: Path | None = None) -> tuple[Plan, Fingerprint]:
    """`medseg plan`: fingerprint the dataset and plan for ``budget_minutes``; with ``out``, write the plan there
    and the fingerprint beside it."""
    started = time.perf_counter()
    fixed = user_keys(config) - {"data.root"}
    config, items, classes = dataset_items(config)
    source = classes.source if classes is not None else "the config"
    plan, fingerprint = plan_dataset(config, items, fixed, source, budget_minutes, time.perf_counter() - started)
    if out is not None:
        plan.save(out)
        fingerprint.save(out.with_name(RunFolder(out.parent).fingerprint.name))
    return plan, fingerprint
