"""`medseg compare`: train every model with one protocol on one split, select each on validation, evaluate each on
the test split only, and aggregate over seeds with confidence intervals and paired tests. Resumable: finished
runs are kept, interrupted ones resumed. Shardable: ``--shard i/N`` processes share one study folder, each run
claimed by one process at a time (:mod:`medseg.claims`); a final call without a shard finishes and reports.

The study folder (:class:`medseg.study.records.StudyFolder`) holds ``study.json`` (the protocol: a different one is
refused), ``runs/<model>/seed<k>/`` (a run folder, its test-split evaluation and ``record.json``) and the report
(results.csv/.json/.md, pairs.csv, *.png, report.html; see :mod:`medseg.study.report`).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.claims import shard_order, try_claim
from medseg.config import Config
from medseg.run.folder import FolderInUse, RunFolder
from medseg.run.weights import load_checkpoint, load_model
from medseg.inference.evaluate import EvaluationSummary, evaluate
from medseg.workflow import TrainRequest, train_run
from medseg.errors import MedsegError
from medseg.files import atomic_create_json, atomic_write_json, csv_float, read_csv
from medseg.log import get_logger
from medseg.models import count_gflops, count_parameters, measure_latency
from medseg.stats import all_pairs, bootstrap_mean_ci, rank_with_ties
from medseg.study.records import (PROTOCOL_FILE, REPORTED_METRICS, ModelChoice, ModelRow, StudyFolder, StudyRecord,
                                  StudySpec, aggregate)

def _record(trained: RunFolder, choice: ModelChoice, seed: int, config: Config,
            summary: EvaluationSummary) -> StudyRecord:
    weights = trained.weights("final_model")
    final = load_checkpoint(weights).info
    model, contract = load_model(weights, prune_depth=choice.prune_depth)
    channels = contract.model.in_channels
    size = config.data.resize or config.data.patch_size or 256
    return StudyRecord(
        model=choice.label, seed=seed, params=count_parameters(model),
        gflops=count_gflops(model, channels, (size, size)), input_size=size,
        cpu_latency_ms=1000 * measure_latency(model, channels, (size, size), "cpu"),
        gpu_latency_ms=(1000 * measure_latency(model.cuda(), channels, (size, size), "cuda")
                        if torch.cuda.is_available() else None),
        train_seconds=final.seconds, epochs=final.epoch, steps=final.step, weights=contract.selected,
        n_test_images=summary.n_images, trained_in=str(trained), prune_depth=choice.prune_depth,
        **_scores(summary))


def _scores(summary: EvaluationSummary) -> dict[str, Any]:
    """A record's test scores: each metric's mean and pooled value; multi-class, each foreground class's Dice."""
    scores: dict[str, Any] = {}
    for name in REPORTED_METRICS:
        scores |= {name: summary.metrics[name]["mean"], f"{name}_pooled": summary.metrics[name]["pooled"]}
    if len(summary.class_names) > 2:  # multi-class: Dice of each foreground class beside their mean
        scores["class_names"] = tuple(summary.class_names)
        scores["class_dice"] = {k: summary.metrics[f"dice_c{k}"]["mean"] for k in range(1, len(summary.class_names))
                                if f"dice_c{k}" in summary.metrics}
    return scores


def _check_protocol(spec: StudySpec, study: StudyFolder) -> None:
    """Write ``study.json``, or check that the folder's study has the same protocol."""
    if study.protocol.is_file():
        if PROTOCOL_FILE.load(study.protocol) != spec:
            raise MedsegError(study.protocol, "this folder holds a study with a different protocol; choose another "
                                              "--out")
        return
    spec.base_config()  # validate before writing anything
    if not atomic_create_json(study.protocol, asdict(spec)):  # another shard created it first
        _check_protocol(spec, study)


def run_study(spec: StudySpec, out: str | Path, shard: tuple[int, int] | None = None) -> list[ModelRow] | None:
    """Run (or resume) the study into ``out``; returns one aggregated row per model once every run is done and
    reported. With ``shard``, only train and evaluate what no other process holds (no report; None)."""
    from medseg.study.report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = StudyFolder(out)
    choices = [ModelChoice.parse(m) for m in spec.models]
    if len({c.folder for c in choices}) != len(choices):
        raise MedsegError("--models", "the same model is listed twice")
    _check_protocol(spec, study)
    trainings = list({(c.trained_as().folder, seed): (c.trained_as(), seed)
                      for c in choices for seed in spec.seeds}.values())
    evaluations = [(c, seed) for c in choices for seed in spec.seeds]
    for index in shard_order(len(trainings), shard):
        trained, seed = trainings[index]
        _train_one(spec, trained, seed, out)
        for choice, _ in [e for e in evaluations if e[1] == seed and e[0].trained_as().folder == trained.folder]:
            _evaluate_one(spec, choice, seed, study)
    for index in shard_order(len(evaluations), shard):  # what other shards trained
        _evaluate_one(spec, *evaluations[index], study)
    records = [_read_record(study, c, seed) for c, seed in evaluations]
    if shard is not None or any(r is None for r in records):
        get_logger().info("study: %d of %d runs done; run again without --shard to finish and report",
                          sum(r is not None for r in records), len(records))
        return None
    scores = {c.label: test_scores(study, c, spec.seeds) for c in choices}
    rows = rank(aggregate(records, [c.label for c in choices]), scores)
    write_report(out, spec, rows, records, choices, all_pairs(scores))
    return rows


def _train_one(spec: StudySpec, trained: ModelChoice, seed: int, out: Path) -> None:
    """Train (or resume) one network through the one train path, unless it is done or another process holds it."""
    train_dir = StudyFolder(out).run(trained.folder, seed).path
    request = TrainRequest(out=train_dir, config=spec.run_config(trained, seed), planning=False, resume="auto",
                           evaluate=False)
    try:
        outcome = train_run(request)
    except FolderInUse:
        get_logger().info("study: %s seed %d is being trained by another process", trained.label, seed)
        return
    if outcome.train is not None:
        get_logger().info("study: trained %s seed %d", trained.label, seed)


def _evaluate_one(spec: StudySpec, choice: ModelChoice, seed: int, study: StudyFolder) -> None:
    """Evaluate one (model, seed) on the test split once its network is trained."""
    run, trained = study.run(choice.folder, seed), study.run(choice.trained_as().folder, seed)
    record = study.record(choice.folder, seed)
    if record.is_file() or not trained.finished:
        return
    claim = try_claim(run.evaluation, f"{choice.label} seed {seed} evaluation")
    if claim is None:
        return
    with claim:
        if record.is_file():
            return
        summary = evaluate(trained.path, spec.data, run.evaluation, split="test", max_overlays=0,
                           prune_depth=choice.prune_depth)
        config = spec.run_config(choice.trained_as(), seed)
        atomic_write_json(record, _record(trained, choice, seed, config, summary).to_dict())


def _read_record(study: StudyFolder, choice: ModelChoice, seed: int) -> StudyRecord | None:
    path = study.record(choice.folder, seed)
    return StudyRecord.load(path) if path.is_file() else None


def test_scores(study: StudyFolder, choice: ModelChoice, seeds: list[int], metric: str = "dice") -> np.ndarray:
    """``seeds x images`` per-image test scores of a model (images in id order)."""
    rows = []
    for seed in seeds:
        per_image = {r["id"]: csv_float(r[metric]) for r in read_csv(study.per_image(choice.folder, seed))}
        rows.append([per_image[i] for i in sorted(per_image)])
    return np.array(rows, dtype=np.float64)


def rank(rows: list[ModelRow], scores: dict[str, np.ndarray]) -> list[ModelRow]:
    """``rows`` with each model's bootstrap 95% interval of test Dice (over images, and seeds when several) and its
    rank (tied where intervals overlap)."""
    intervals = {label: bootstrap_mean_ci(matrix) for label, matrix in scores.items()}
    means = {label: float(np.nanmean(matrix)) for label, matrix in scores.items()}
    ranks = rank_with_ties(means, intervals)
    return [replace(row, dice_ci=intervals[row.model], rank=ranks[row.model]) for row in rows]


def parse_models(text: str) -> list[str]:
    """Split ``--models`` on commas (options use ':' so commas are free)."""
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise MedsegError("--models", "no models given")
    return models
