"""Evaluation report: per-image CSV, summary JSON, overlays; the recorded split wherever the data lives; never on
training images."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import pytest

from medseg.run.weights import load_checkpoint, save_checkpoint
from medseg.run.contract import RunContract
from medseg.inference.evaluate import evaluate
from medseg.workflow import train
from medseg.errors import MedsegError


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_data):
    from tests.helpers import tiny_config

    run = tmp_path_factory.mktemp("run") / "run"
    train(tiny_config(synthetic_data), run)
    return run


def test_evaluate_writes_report_on_the_test_split(run, tmp_path, synthetic_data):
    summary = evaluate(run, synthetic_data, tmp_path / "eval", split="test")
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    test_ids = json.loads((run / "contract.json").read_text())["data"]["splits"]["test"]
    assert [r["id"] for r in rows] == test_ids and len(rows) == 2
    assert list(rows[0]) == ["id", "dice", "iou", "accuracy", "precision", "recall", "specificity", "hd95",
                            "labelled_fraction"]
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["metrics"]["dice"]["mean"] == pytest.approx(summary.metrics["dice"]["mean"])
    assert saved["empty_rule"] == "perfect" and saved["dataset"] == "the run's recorded test split"
    assert (tmp_path / "eval" / "overlays.png").stat().st_size > 0


def test_a_moved_dataset_is_recognised_by_its_ids_and_files(run, tmp_path, synthetic_data):
    """The data moved and its split.csv was lost: the run's recorded split is still used, not a re-split."""
    moved = tmp_path / "moved"
    shutil.copytree(synthetic_data, moved)
    (moved / "split.csv").unlink()
    summary = evaluate(run, moved, tmp_path / "eval", split="test")
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    assert [r["id"] for r in rows] == json.loads((run / "contract.json").read_text())["data"]["splits"]["test"]
    assert summary.dataset == "the run's recorded test split"


def test_another_dataset_is_evaluated_on_its_own_split(run, tmp_path):
    from medseg.data.synthetic import make_synthetic_dataset

    other = make_synthetic_dataset(tmp_path / "other", n_images=6, size=40, seed=5)
    for path in (other / "images").iterdir():  # other ids than the training set's
        path.rename(path.with_name("x" + path.name))
        (other / "masks" / path.name).rename(other / "masks" / ("x" + path.name))
    (other / "split.csv").write_text((other / "split.csv").read_text().replace("cells_", "xcells_"))
    summary = evaluate(run, other, tmp_path / "eval", split="test")
    assert summary.dataset == "the dataset's own test split" and summary.n_images == 1


def test_evaluate_refuses_a_split_that_overlaps_training(run, tmp_path, synthetic_data):
    leaky = tmp_path / "leaky"
    shutil.copytree(run, leaky)
    contract = RunContract.load(leaky / "contract.json")
    splits = contract.data.splits
    leaked_splits = replace(splits, train=splits.train + splits.test[:1])
    leaked = replace(contract, data=replace(contract.data, splits=leaked_splits))
    leaked.save(leaky / "contract.json")
    weights = leaky / f"{contract.selected}.safetensors"
    checkpoint = load_checkpoint(weights)
    save_checkpoint(weights, checkpoint.weights, leaked, checkpoint.info)
    with pytest.raises(MedsegError, match="overlaps the model's training images"):
        evaluate(leaky, synthetic_data, tmp_path / "eval", split="test")
