"""The one train path: planning by default, the user's values reaching the planner, one config load and one
dataset listing per command, resume decided in one place for every entry point, and the run folder's lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import medseg
from medseg import workflow
from medseg.cli import main
from medseg.config import load_config
from medseg.data import datasets
from medseg.run.folder import RunFolder
from medseg.training.callbacks import PAUSE_HOOK, SIGNAL_HOOK

TINY = ["--set", "model.widths=[4,8,16]", "--patch-size", "32", "--batch-size", "2", "--set",
        "train.steps_per_epoch=2", "--set", "train.val_time_share=null", "--set", "train.tensorboard=false"]


class Stop(Exception):
    pass


def _count_calls(monkeypatch, function, name: str) -> list[int]:
    """Count every call of ``function`` through any medseg module that imported it as ``name``."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    for module in list(sys.modules.values()):
        if (getattr(module, "__name__", "") or "").startswith("medseg") and getattr(module, name, None) is function:
            monkeypatch.setattr(module, name, counted)
    return calls


def _spy_resume(monkeypatch) -> list[str]:
    modes = []
    real = RunFolder.opening

    def spy(folder, rule):
        modes.append(real(folder, rule))
        return modes[-1]

    monkeypatch.setattr(RunFolder, "opening", spy)
    return modes


def test_train_without_a_budget_plans_and_records_the_plan(synthetic_data, tmp_path, monkeypatch):
    """`medseg train --data D --out R` plans (for the config's step count): plan.yaml, and the contract records
    the plan; the config is loaded once and the dataset listed once, evaluation included."""
    loads = _count_calls(monkeypatch, workflow.load_config, "load_config")
    listings = _count_calls(monkeypatch, datasets.load_items, "load_items")
    out = tmp_path / "planned"
    assert main(["train", "--data", str(synthetic_data), "--out", str(out), "--iterations", "4", *TINY]) == 0
    folder = RunFolder(out)
    assert folder.plan.is_file() and folder.read_contract().plan is not None
    assert folder.evaluation.is_dir()  # the plan held out a test split, and the run was evaluated on it
    assert (len(loads), len(listings)) == (1, 1)


def test_a_cross_validation_loads_the_config_once_and_lists_the_dataset_once(synthetic_data, tmp_path, monkeypatch):
    """`medseg train --folds K`: every fold, the out-of-fold summary and the test evaluation share one listing."""
    loads = _count_calls(monkeypatch, workflow.load_config, "load_config")
    listings = _count_calls(monkeypatch, datasets.load_items, "load_items")
    out = tmp_path / "cv"
    assert main(["train", "--data", str(synthetic_data), "--out", str(out), "--folds", "2", "--iterations", "4",
                 *TINY]) == 0
    assert (out / "fold_1").is_dir() and RunFolder(out).cv_summary.is_file()
    assert (len(loads), len(listings)) == (1, 1)


def test_volumes_the_plan_slices_along_another_axis_are_not_listed_again(tmp_path, monkeypatch):
    """One volume's coarsest axis is 0, the others' 2: the plan slices every volume along axis 2, from the one
    listing."""
    from tests.data import fixtures

    root = fixtures.make_msd(tmp_path / "task", n=6)
    image, labels = fixtures.blob_volume(5)
    across = np.array([[2.0, 0, 0, 0], [0, 0.9, 0, 0], [0, 0, 0.9, 0], [0, 0, 0, 1]])
    fixtures.write_nifti(root / "imagesTr" / "case_005.nii.gz", image, across)
    fixtures.write_nifti(root / "labelsTr" / "case_005.nii.gz", labels, across)
    assert {item.slice.axis for item in datasets.load_items(root) if item.case == "case_005"} == {0}
    listings = _count_calls(monkeypatch, datasets.load_items, "load_items")
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--iterations", "2", *TINY]) == 0
    contract = RunFolder(out).read_contract()
    splits = contract.data.splits
    slices = [i for i in splits.train + splits.val + splits.test if i.startswith("case_005_")]
    assert load_config(RunFolder(out).config).data.slice_axis == 2
    assert len(slices) == image.shape[2] and len(listings) == 1


def test_no_plan_trains_the_config_as_it_is(synthetic_data, tmp_path):
    out = tmp_path / "static"
    assert main(["train", "--data", str(synthetic_data), "--out", str(out), "--iterations", "4", "--no-plan",
                 *TINY]) == 0
    folder = RunFolder(out)
    assert not folder.plan.exists() and folder.read_contract().plan is None
    assert load_config(folder.config).model.widths == [4, 8, 16]


def test_a_scaled_run_trains_and_evaluates_at_its_scale(synthetic_data, tmp_path):
    out = tmp_path / "scaled"
    assert main(["train", "--data", str(synthetic_data), "--out", str(out), "--iterations", "4", "--no-plan",
                 "--set", "data.scale=0.5", "--set", "data.test_fraction=0.2", *TINY]) == 0
    folder = RunFolder(out)
    assert folder.read_contract().inference.scale == 0.5
    predictor = medseg.Predictor.from_run(out)
    image = np.zeros((64, 48, 1), np.float32)
    assert predictor.predict(image).shape == (64, 48)
    assert (folder.evaluation / "summary.json").is_file()


def test_the_probe_times_the_users_batch_and_patch_size(synthetic_data, monkeypatch):
    """The planner gets the user's values, not only their names: its probes run the batch and size that will
    train, and the plan's step estimate is for that run."""
    from medseg import plan as plan_module

    timed = []

    def probe(model, options, size, batch_size, *args, **kwargs):
        timed.append((model, size, batch_size))
        return 0.05

    monkeypatch.setattr(plan_module, "probe_step", probe)
    config = load_config(None, [f"data.root={synthetic_data}", "train.batch_size=2", "data.patch_size=64"])
    plan, _ = workflow.plan_only(config, budget_minutes=5)
    assert timed and {(size, batch) for _, size, batch in timed} == {(64, 2)}
    assert {p.size for p in plan.probes} == {64} and {p.batch_size for p in plan.probes} == {2}
    keys = {choice.key for choice in plan.choices}
    assert "train.batch_size" not in keys and "data.patch_size" not in keys

    timed.clear()
    plan, _ = workflow.plan_only(load_config(None, [f"data.root={synthetic_data}"]), budget_minutes=5)
    size = plan.value("data.patch_size") or plan.value("data.resize")
    assert {(s, b) for _, s, b in timed} == {(size, plan.value("train.batch_size"))}  # the planned run, timed
    assert plan.seconds_per_step > 0.05  # the step the run should take: the probe's compute and the data loading

    timed.clear()
    config = load_config(None, [f"data.root={synthetic_data}", "model.name=unetpp", "model.widths=[4,8,16,32,64]"])
    workflow.plan_only(config, budget_minutes=5)
    assert [model for model, _, _ in timed] in (["unetpp"], ["unetpp"] * 2)  # the user's network, once per precision


def test_a_budgeted_run_records_its_planned_and_actual_step_rates(synthetic_data, tmp_path):
    from medseg.run.history import read_history

    out = tmp_path / "budgeted"
    assert main(["train", "--data", str(synthetic_data), "--out", str(out), "--budget", "6s", *TINY]) == 0
    folder = RunFolder(out)
    planned = folder.read_contract().plan.seconds_per_step
    assert planned and planned > 0
    assert all(row.steps_per_second > 0 for row in read_history(out))
    assert "steps per second: " in folder.log.read_text() and " planned (actual / planned " in folder.log.read_text()


def _interrupt(monkeypatch, step: int = 3) -> None:
    monkeypatch.setenv(SIGNAL_HOOK, f"{step}:SIGINT")


def test_train_resumes_through_the_one_decision(tiny_config, tmp_path, monkeypatch):
    modes = _spy_resume(monkeypatch)
    _interrupt(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        medseg.train(tiny_config, tmp_path / "run")
    monkeypatch.delenv(SIGNAL_HOOK)
    result = medseg.train(None, tmp_path / "run", resume=True)
    assert modes == ["fresh", "resume"] and result.steps_run == 6


def test_folds_resume_through_the_one_decision(tiny_config, tmp_path, monkeypatch):
    tiny_config.data.folds, tiny_config.train.epochs = 2, 2
    modes = _spy_resume(monkeypatch)
    _interrupt(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        workflow.train_folds(tiny_config, tmp_path / "cv")
    monkeypatch.delenv(SIGNAL_HOOK)
    assert workflow.train_folds(tiny_config, tmp_path / "cv") is not None
    assert modes == ["fresh", "resume", "fresh"]


def test_a_study_resumes_through_the_one_decision(synthetic_data, tmp_path, monkeypatch):
    from medseg.study.compare import StudySpec, run_study

    config = tmp_path / "tiny.yaml"
    config.write_text("data: {patch_size: 32}\nmodel: {widths: [4, 8, 16]}\ntrain: {batch_size: 2, "
                      "steps_per_epoch: 2, epochs: 2, val_time_share: null, tensorboard: false}\n")
    spec = StudySpec(data=str(synthetic_data), models=["unet"], seeds=[0], config=str(config))
    modes = _spy_resume(monkeypatch)
    _interrupt(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, tmp_path / "study")
    monkeypatch.delenv(SIGNAL_HOOK)
    assert run_study(spec, tmp_path / "study")
    assert modes == ["fresh", "resume"]


@pytest.mark.slow
def test_the_demo_resumes_through_the_one_decision(tmp_path, monkeypatch):
    from medseg.demo import run_demo

    modes = _spy_resume(monkeypatch)
    _interrupt(monkeypatch, step=2)
    with pytest.raises(KeyboardInterrupt):  # 0.5 min: planning never leaves training fewer than 2 steps
        run_demo(tmp_path / "demo", minutes=0.5)
    monkeypatch.delenv(SIGNAL_HOOK)
    assert run_demo(tmp_path / "demo", minutes=0.5).n_images > 0
    assert modes == ["fresh", "resume"]


def _train_command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "medseg", "train", "--data", str(data), "--out", str(out), "--iterations", "6",
            "--no-plan", *TINY]


def test_two_trainings_cannot_share_a_run_folder(synthetic_data, tmp_path):
    """The first holds the folder's lock for the whole run (held at step 2 by a hook, not a sleep); the second,
    started meanwhile, gets one line naming the first process."""
    hook = tmp_path / "hook"
    hook.mkdir()
    os.mkfifo(hook / "paused")
    os.mkfifo(hook / "resume")
    out = tmp_path / "run"
    env = {**os.environ, PAUSE_HOOK: f"2:{hook}"}
    first = subprocess.Popen(_train_command(synthetic_data, out), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        with open(hook / "paused", encoding="utf-8") as paused:  # blocks until the first run reaches step 2
            assert paused.read() == "paused\n"
        second = subprocess.run(_train_command(synthetic_data, out), capture_output=True, text=True, timeout=120)
    finally:
        with open(hook / "resume", "w", encoding="utf-8"):
            pass
    assert first.wait(timeout=300) == 0, first.stdout.read()[-2000:]
    assert second.returncode == 2
    error = second.stderr.strip().splitlines()
    assert len(error) == 1 and "is in use by medseg train pid" in error[0] and str(first.pid) in error[0]
    assert RunFolder(out).read_contract().selected  # the first run finished intact


def test_a_mixed_dataset_trains_on_its_dense_and_partial_masks_only(synthetic_data, tmp_path, capsys):
    """Dense masks, partial masks (128 = unlabelled) and images without a mask: the unlabelled images are listed
    by `data check` and never reach a split."""
    import shutil

    from medseg.data.readers import read_mask, write_array

    root = tmp_path / "mixed"
    shutil.copytree(synthetic_data, root)
    (root / "split.csv").unlink()
    masks = sorted((root / "masks").iterdir())
    for path in masks[:4]:  # partial: only the top rows labelled
        pixels = read_mask(path) * 255
        pixels[16:] = 128
        write_array(path, pixels.astype(np.uint8))
    for path in masks[-3:]:
        path.unlink()
    unlabelled = sorted(path.stem for path in masks[-3:])
    assert main(["data", "check", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "labels:        5 dense, 4 partial" in printed and ", 3 without a mask" in printed
    assert f"unlabelled:    {', '.join(unlabelled)}" in printed
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--iterations", "4", *TINY]) == 0
    splits = RunFolder(out).read_contract().data.splits
    assert len(splits.train + splits.val + splits.test) == 9 and not set(unlabelled) & set(splits.train)
    assert (RunFolder(out).evaluation / "summary.json").is_file()
