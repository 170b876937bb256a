"""Evaluation report: per-image CSV, summary JSON, overlays; never on training images."""

from __future__ import annotations

import csv
import json

import pytest

from medseg.engine.evaluate import evaluate
from medseg.engine.train import train
from medseg.errors import MedsegError


def test_evaluate_writes_report_on_the_test_split(tiny_config, tmp_path, synthetic_data):
    run = tmp_path / "run"
    train(tiny_config, run)
    summary = evaluate(run, synthetic_data, tmp_path / "eval", split="test")
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    test_ids = json.loads((run / "best_model.json").read_text())["training_data"]["test_ids"]
    assert [r["id"] for r in rows] == test_ids and len(rows) == 2
    assert {"dice", "iou", "accuracy", "precision", "recall", "specificity", "hd95"} <= set(rows[0])
    saved = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert saved["metrics"]["dice"]["mean"] == pytest.approx(summary["metrics"]["dice"]["mean"])
    assert saved["empty_rule"] == "perfect" and saved["checkpoint"].endswith("best_model.safetensors")
    assert (tmp_path / "eval" / "overlays.png").stat().st_size > 0


def test_evaluate_refuses_a_split_that_overlaps_training(tiny_config, tmp_path, synthetic_data, monkeypatch):
    run = tmp_path / "run"
    train(tiny_config, run)
    meta_path = run / "best_model.safetensors"
    from medseg.engine import evaluate as evaluate_module

    real_load = evaluate_module.load_model

    def leaky_load(path, device, prune_depth=None):
        model, meta = real_load(path, device, prune_depth)
        meta["training_data"]["train_ids"].append(meta["training_data"]["test_ids"][0])
        return model, meta

    monkeypatch.setattr(evaluate_module, "load_model", leaky_load)
    with pytest.raises(MedsegError, match="overlaps the model's training images"):
        evaluate(meta_path, synthetic_data, tmp_path / "eval", split="test")
