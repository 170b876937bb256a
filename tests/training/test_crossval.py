"""Cross-validation: every fold in one folder, resumable; out-of-fold summary; the ensemble serves predict and
evaluate."""

from __future__ import annotations

import csv
import json

import pytest

from medseg.cli import main
from medseg.run.folder import RunFolder
from medseg.inference.predictor import Predictor


class Stop(Exception):
    pass


def test_three_folds_resume_summarise_and_ensemble(tiny_config, tmp_path, synthetic_data, monkeypatch):
    from medseg import workflow

    tiny_config.data.folds, tiny_config.train.epochs = 3, 1
    real_fit = workflow._fit
    calls = []

    def fit_until_fold_1(prepared, hooks, context):
        calls.append((prepared.folder.path.name, prepared.resume))
        if prepared.folder.path.name == "fold_1" and not prepared.resume:
            def stop(epoch, row):
                raise Stop
            return real_fit(prepared, workflow.Hooks(on_epoch_end=stop), context)
        return real_fit(prepared, hooks, context)

    monkeypatch.setattr(workflow, "_fit", fit_until_fold_1)
    run = tmp_path / "cv"
    with pytest.raises(Stop):
        workflow.train_folds(tiny_config, run)
    calls.clear()
    summary = workflow.train_folds(tiny_config, run)
    assert calls == [("fold_1", True), ("fold_2", False)]  # fold 0 kept, fold 1 resumed, fold 2 trained
    assert summary.folds == 3 and len(summary.fold_dice) == 3 and summary.n_images == 10
    rows = list(csv.DictReader((run / "cv_per_image.csv").open()))
    assert sorted(r["id"] for r in rows) == sorted(json.loads((run / "contract.json").read_text())["data"]
                                                  ["splits"]["train"])  # every non-test image once, out of fold
    saved = json.loads((run / "cv_summary.json").read_text())
    assert saved["metrics"]["dice"]["mean"] == pytest.approx(summary.metrics["dice"]["mean"])
    assert {"mean", "std", "pooled"} <= set(saved["metrics"]["dice"]) and "fold_dice_std" in saved
    predictor = Predictor.from_run(run)
    assert len(predictor.backends) == 3 and len(Predictor.from_run(run, folds=[0, 2]).backends) == 2
    assert [f.path.name for f in RunFolder(run).folds()] == ["fold_0", "fold_1", "fold_2"]
    assert main(["evaluate", str(run), "--data", str(synthetic_data), "--out", str(tmp_path / "eval"),
                 "--folds", "0,2"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert evaluated["members"] == 2 and evaluated["n_images"] == 2
