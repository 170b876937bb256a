"""A two-model, tiny-width study on synthetic data, end to end: interrupted, resumed, and its report checked in a
real browser."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest

from medseg.data.synthetic import make_synthetic_dataset
from medseg.errors import MedsegError
from medseg.run.folder import RunFolder
from medseg.study import compare as compare_module
from medseg.study.compare import StudySpec, run_study
from tests.study.browser import render


def _spec(data, models=("unet", "usegnet:skips=1"), epochs=2):
    return StudySpec(data=str(data), models=list(models), seeds=[0],
                     overrides=[f"train.epochs={epochs}", "data.patch_size=32", "model.width_scale=0.125",
                                "train.steps_per_epoch=2", "train.batch_size=2", "train.val_time_share=null"])


def _trainings(monkeypatch, interrupt: str | None = None) -> list[tuple[str, bool]]:
    """Each network the study trains (not one already finished): its folder, and whether it resumed. The first
    training of a folder containing ``interrupt`` raises :class:`Interrupted` after its first epoch."""
    real_train_run = compare_module.train_run
    calls = []

    def stop(epoch, _row):
        raise Interrupted

    def recording_train_run(request):
        folder = RunFolder(request.out)
        if not folder.finished:
            calls.append((str(request.out), folder.started))
        if interrupt and interrupt in str(request.out) and not folder.started:
            request = replace(request, hooks=replace(request.hooks, on_epoch_end=stop))
        return real_train_run(request)

    monkeypatch.setattr(compare_module, "train_run", recording_train_run)
    return calls


class Interrupted(Exception):
    pass


def test_study_end_to_end_with_resume_and_browser_check(tmp_path, monkeypatch):
    data = make_synthetic_dataset(tmp_path / "data", n_images=12, size=48)
    out = tmp_path / "study"
    calls = _trainings(monkeypatch, interrupt="usegnet")
    with pytest.raises(Interrupted):
        run_study(_spec(data), out)
    assert (out / "runs" / "unet" / "seed0" / "record.json").is_file()
    calls.clear()
    rows = run_study(_spec(data), out)
    # unet was not retrained; usegnet resumed from its checkpoint
    assert calls == [(str(out / "runs" / "usegnet__skips=1" / "seed0"), True)]
    assert [r.model for r in rows] == ["unet", "usegnet:skips=1"]
    for name in ("results.csv", "results.json", "results.md", "pairs.csv", "dice_intervals.png", "dice_vs_params.png",
                 "dice_vs_latency.png", "val_dice_curves.png", "dice_boxplot.png", "gallery.png", "report.html"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert {r["epochs"] for r in results["runs"]} == {2}
    splits = json.loads((out / "runs" / "unet" / "seed0" / "contract.json").read_text())["data"]["splits"]
    evaluated = [r["id"] for r in csv.DictReader((out / "runs" / "unet" / "seed0" / "eval" / "per_image.csv").open())]
    assert evaluated == splits["test"] and not set(evaluated) & set(splits["train"] + splits["val"])
    assert "single seed" in (out / "results.md").read_text()

    check = render(out / "report.html", tmp_path / "report.png")
    assert check.console_errors == []
    assert check.table_rows == 2 and check.pair_rows == 1
    assert len(check.image_widths) == 6 and all(width > 0 for width in check.image_widths)
    assert (tmp_path / "report.png").stat().st_size > 10_000

    with pytest.raises(MedsegError, match="different protocol"):
        run_study(_spec(data, models=("unet",)), out)


def test_pruned_unetpp_is_evaluated_from_the_trained_network(tmp_path, monkeypatch):
    data = make_synthetic_dataset(tmp_path / "data", n_images=10, size=32)
    trained = _trainings(monkeypatch)
    rows = run_study(_spec(data, models=("unetpp", "unetpp:prune_depth=1"), epochs=1), tmp_path / "study")
    assert trained == [(str(tmp_path / "study" / "runs" / "unetpp" / "seed0"), False)]
    full, pruned = rows
    assert pruned.value("gflops") < full.value("gflops")
    assert pruned.value("train_seconds") == full.value("train_seconds")


def test_two_shards_share_a_study_and_merge_to_the_single_process_result(tmp_path):
    import os
    import subprocess
    import sys

    data = make_synthetic_dataset(tmp_path / "data", n_images=10, size=40)
    base = [sys.executable, "-m", "medseg", "compare", "--data", str(data), "--models", "unet,usegnet:skips=1",
            "--seeds", "0,1", "--epochs", "2", "--set", "data.patch_size=32", "--set", "model.width_scale=0.125",
            "--set", "train.steps_per_epoch=2", "--set", "train.batch_size=2", "--set", "train.val_time_share=null",
            "--set", "train.deterministic=true", "--set", "train.tensorboard=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    shards = [subprocess.Popen([*base, "--out", str(tmp_path / "sharded"), "--shard", f"{i}/2"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [shard.communicate(timeout=600)[0] for shard in shards]
    assert [shard.returncode for shard in shards] == [0, 0], outputs
    runs = sorted((tmp_path / "sharded" / "runs").glob("*/seed*"))
    assert len(runs) == 4
    for run in runs:  # trained exactly once, by one of the shards
        assert (run / "train.log").read_text().count("parameters on cpu") == 1, run
    trained_by = [output.count("study: trained ") for output in outputs]
    assert sum(trained_by) == 4
    merged = subprocess.run([*base, "--out", str(tmp_path / "sharded")], env=env, capture_output=True, text=True)
    single = subprocess.run([*base, "--out", str(tmp_path / "single")], env=env, capture_output=True, text=True)
    assert merged.returncode == single.returncode == 0, merged.stderr[-2000:] + single.stderr[-2000:]
    assert "training" not in merged.stdout  # the merge trains nothing
    a = json.loads((tmp_path / "sharded" / "results.json").read_text())
    b = json.loads((tmp_path / "single" / "results.json").read_text())
    for left, right in zip(a["runs"], b["runs"]):
        assert (left["model"], left["seed"]) == (right["model"], right["seed"])
        for metric in ("dice", "iou", "hd95", "dice_pooled"):
            assert left[metric] == pytest.approx(right[metric], abs=1e-6)
    print(f"shards trained {trained_by} of 4 runs; merged results equal the single-process study")


def three_class_dataset(root):
    """The synthetic cells, those in the left half of an image class 1 ('left'), in the right half class 2."""
    import numpy as np

    from medseg.data.readers import read_mask, write_mask

    data = make_synthetic_dataset(root, n_images=10, size=32)
    for path in sorted((data / "masks").glob("*.png")):
        mask = read_mask(path)
        right = np.arange(mask.shape[1])[None, :] >= mask.shape[1] // 2
        write_mask(path, np.where(mask > 0, 1 + right, 0), n_classes=3)
    return data


def test_a_three_class_study_reports_per_class_dice_and_the_legend(tmp_path):
    import numpy as np
    from PIL import Image

    from medseg.visualize import class_colour

    spec = _spec(three_class_dataset(tmp_path / "data"), models=("unet",))
    spec.overrides += ["data.n_classes=3", "data.class_names=[background,left,right]"]
    out = tmp_path / "study"
    (row,) = run_study(spec, out)
    c1, c2 = row.value("dice_c1"), row.value("dice_c2")
    assert 0 <= c1 <= 1 and c2 is not None
    assert row.dice == pytest.approx((c1 + c2) / 2, abs=1e-9) or np.isnan(row.dice)
    header = (out / "results.md").read_text().splitlines()[0]
    assert "| Dice (mean fg) | Dice 95% CI | Dice left | Dice right |" in header
    assert {"dice_c1", "dice_c2"} <= set(next(csv.DictReader((out / "results.csv").open())))
    report = (out / "report.html").read_text()
    assert 'id="legend"' in report and "</span>left</li>" in report and "rgb(0, 200, 255)" in report
    assert (out / "dice_per_class.png").is_file()
    gallery = np.asarray(Image.open(out / "gallery.png").convert("RGB"))
    legend = gallery[-16:]  # the strip under the grid
    for k in (1, 2):
        assert (legend == np.array(class_colour(k), np.uint8)).all(axis=2).sum() > 50

    check = render(out / "report.html", tmp_path / "report.png")
    assert check.console_errors == [] and check.table_rows == 1
    assert len(check.image_widths) == 7 and all(width > 0 for width in check.image_widths)
