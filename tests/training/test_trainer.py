"""The training loop: a run's outputs with any observers, steps.csv and curves, resume equivalence (step- and
budget-driven), validation pacing, NaN stop, selection."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import medseg
from medseg.errors import MedsegError
from medseg.run.folder import RunFolder
from medseg.run.history import read_history, read_steps
from medseg.run.weights import load_checkpoint
from medseg.training import components as components_module
from medseg.training.callbacks import Callback, EpochFunction, ProgressCallback
from medseg.training.trainer import default_callbacks
from medseg.workflow import train


def test_run_folder_contents(tiny_config, tmp_path):
    result = train(tiny_config, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "contract.json", "fingerprint.json", "checkpoint.safetensors", "checkpoint.json",
                 "best_model.safetensors", "best_model.json", "final_model.safetensors", "final_model.json",
                 "history.csv", "steps.csv", "train.log", "curves.png", "postprocess.json"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and result.steps_run == 6
    contract = json.loads((run / "contract.json").read_text())
    assert contract["model"]["name"] == "unet" and contract["inference"]["normalize"] == "zscore"
    splits = contract["data"]["splits"]
    assert not set(splits["train"]) & set(splits["val"]) and not set(splits["train"]) & set(splits["test"])
    assert result.selected == contract["selected"] == "final_model"  # the cosine schedule anneals
    with pytest.raises(MedsegError, match="already holds a run"):
        train(tiny_config, run)


class Killed(Exception):
    pass


def _kill_after(epoch_to_die: int):
    def kill(epoch, _row):
        if epoch == epoch_to_die:
            raise Killed

    return kill


def _assert_same_weights(a_path, b_path):
    a, b = load_checkpoint(a_path).weights, load_checkpoint(b_path).weights
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


def test_killed_and_resumed_run_ends_with_the_same_weights(tiny_config, tmp_path):
    tiny_config.train.epochs = 4
    train(tiny_config, tmp_path / "straight")
    with pytest.raises(Killed):
        train(tiny_config, tmp_path / "resumed", on_epoch_end=_kill_after(2))
    assert not (tmp_path / "resumed" / "final_model.safetensors").exists()
    train(None, tmp_path / "resumed", resume=True)
    _assert_same_weights(tmp_path / "straight" / "final_model.safetensors",
                         tmp_path / "resumed" / "final_model.safetensors")
    rows = list(csv.DictReader((tmp_path / "resumed" / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    straight, resumed = read_steps(tmp_path / "straight"), read_steps(tmp_path / "resumed")
    assert [r.step for r in resumed] == [r.step for r in straight] == list(range(1, 9))
    assert [r.loss for r in resumed] == pytest.approx([r.loss for r in straight], rel=1e-4)


@pytest.mark.parametrize("observers", [[], [ProgressCallback(), EpochFunction(lambda epoch, row: None)]],
                         ids=["none", "some"])
def test_any_observers_still_validate_checkpoint_and_keep_predictable_weights(tiny_config, tmp_path, observers):
    """Validation, best weights, checkpoints and the contract are the trainer's own: with the constant schedule
    the run keeps its best weights, and they exist whatever the callbacks."""
    tiny_config.optim.schedule = "constant"
    result = train(tiny_config, tmp_path / "run", callbacks=observers)
    run = RunFolder(tmp_path / "run")
    assert result.selected == run.read_contract().selected == "best_model"
    assert run.weights("best_model").is_file() and run.weights("final_model").is_file() and run.checkpoint.is_file()
    assert all(row.validated for row in read_history(run.path)) and run.curves.is_file()
    predictor = medseg.Predictor.from_run(run.path)
    image = np.random.default_rng(0).random((48, 48, predictor.spec.channels))
    assert predictor.predict(image).shape == (48, 48)


@pytest.mark.parametrize(("log_every", "logged"), [(1, list(range(1, 13))), (5, [5, 10, 12])])
def test_steps_csv_has_a_row_per_logged_step_and_curves_plot_it(tiny_config, tmp_path, log_every, logged):
    """3 epochs of 4 steps: a smoothed-loss row every ``log_every`` steps (and at the last step)."""
    tiny_config.train.steps_per_epoch, tiny_config.train.log_every = 4, log_every
    train(tiny_config, tmp_path / "run", callbacks=[])
    rows = read_steps(tmp_path / "run")
    assert [r.step for r in rows] == logged
    assert all(r.loss > 0 and r.lr > 0 for r in rows)
    assert [r.seconds for r in rows] == sorted(r.seconds for r in rows)
    assert RunFolder(tmp_path / "run").curves.read_bytes().startswith(b"\x89PNG")


class FakeClock:
    """Time that passes only when a step ends: one second per optimizer step."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def now(self) -> float:
        return self.seconds


class Tick(Callback):
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def on_step_end(self, view):
        self.clock.seconds += 1.0


def _budget_callbacks(config, clock, kill_at=None):
    # Tick runs first, so every callback and the deadline see the step's second.
    return [Tick(clock), *default_callbacks(config, _kill_after(kill_at) if kill_at else None)]


def test_budgeted_schedule_anneals_at_the_deadline_and_resumes_exactly(tiny_config, tmp_path):
    tiny_config.train.budget_minutes = 0.2  # 12 fake seconds = 12 steps (fake validation takes no time)
    tiny_config.train.steps_per_epoch = 5
    clock = FakeClock()
    lrs = []

    class RecordLr(Callback):
        def on_step_end(self, view):
            lrs.append(view.lr)

    result = train(tiny_config, tmp_path / "straight", clock=clock,
                   callbacks=[*_budget_callbacks(tiny_config, clock), RecordLr()])
    assert result.steps_run == 12 and result.epochs_run == 3  # 5 + 5 + 2: the deadline ends the last epoch
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < 0.03 * lrs[0]  # decays to ~0 exactly at the deadline
    assert lrs == sorted(lrs, reverse=True)

    clock = FakeClock()
    with pytest.raises(Killed):
        train(tiny_config, tmp_path / "resumed", clock=clock, callbacks=_budget_callbacks(tiny_config, clock, 1))
    clock = FakeClock()
    train(None, tmp_path / "resumed", resume=True, clock=clock, callbacks=_budget_callbacks(tiny_config, clock))
    _assert_same_weights(tmp_path / "straight" / "final_model.safetensors",
                         tmp_path / "resumed" / "final_model.safetensors")


def test_validation_costs_at_most_its_share_of_the_time(tiny_config, tmp_path, monkeypatch):
    """Epochs of one 1-second step and validations of 3 seconds: validating every epoch would cost 75% of the
    time; paced at a 10% share, it costs at most 10%, and the last epoch is still validated."""
    from medseg.training import validation as validation_module

    tiny_config.train.epochs, tiny_config.train.steps_per_epoch = 60, 1
    tiny_config.train.val_time_share = 0.1
    clock = FakeClock()
    real_validate = validation_module.validate

    def costly_validate(*args, **kwargs):
        clock.seconds += 3.0
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(validation_module, "validate", costly_validate)
    result = train(tiny_config, tmp_path / "run", clock=clock,
                   callbacks=[Tick(clock), *default_callbacks(tiny_config)])
    validated = [row.epoch for row in result.history if row.validated]
    total_validation = sum(row.val_seconds for row in result.history)
    assert len(validated) >= 2 and validated[-1] == 60
    assert total_validation <= 0.1 * result.seconds


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    real_build_loss = components_module.build_loss
    calls = {"n": 0}

    def exploding_loss(*args, **kwargs):
        loss = real_build_loss(*args, **kwargs)

        def forward(outputs, mask, region=None):
            calls["n"] += 1
            value = loss(outputs, mask, region)
            return value * float("nan") if calls["n"] > 3 else value

        return forward

    monkeypatch.setattr(components_module, "build_loss", exploding_loss)
    with pytest.raises(MedsegError, match="loss became nan at step 4"):
        train(tiny_config, tmp_path / "run")
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert checkpoint.info.epoch == 1 and checkpoint.train_state["step"] == 2


@pytest.mark.parametrize(("schedule", "optimizer"), [("constant", "sgd"), ("poly", "adamw"), ("plateau", "sgd")])
def test_optimizers_and_schedules_are_applied(tiny_config, tmp_path, schedule, optimizer):
    tiny_config.optim.schedule, tiny_config.optim.name = schedule, optimizer
    tiny_config.optim.grad_clip = 1.0
    tiny_config.optim.plateau_patience = 0
    result = train(tiny_config, tmp_path / "run")
    lrs = [row.lr for row in result.history]
    if schedule == "constant":
        assert lrs == [pytest.approx(1e-3)] * 3
    elif schedule == "poly":  # (1 - step/6) ** 0.9 at steps 1, 3, 5
        assert lrs == pytest.approx([1e-3 * (1 - s / 6) ** 0.9 for s in (1, 3, 5)])
    else:  # no improvement on a constant validation score halves the rate after each validation
        assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    optim = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").train_state["optimizer"]
    expected = {"sgd": "momentum", "adamw": "amsgrad"}[optimizer]
    assert expected in optim["param_groups"][0]
    assert result.selected == ("final_model" if schedule == "poly" else "best_model")


def test_unetpp_deep_supervision_trains(tiny_config, tmp_path):
    tiny_config.model.name = "unetpp"
    tiny_config.model.widths = [4, 8, 8]
    tiny_config.train.epochs = 1
    assert train(tiny_config, tmp_path / "run").steps_run == 2


def test_fold_all_trains_on_every_labelled_image_without_validation(tiny_config, tmp_path):
    tiny_config.data.fold = "all"
    result = train(tiny_config, tmp_path / "run")
    contract = json.loads((tmp_path / "run" / "contract.json").read_text())
    assert contract["data"]["splits"]["val"] == [] and len(contract["data"]["splits"]["train"]) == 10
    assert result.selected == "final_model" and not any(row.validated for row in result.history)


def test_tensorboard_logs_scalars_and_validation_overlays(tiny_config, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_config.train.tensorboard, tiny_config.train.log_every = True, 1
    train(tiny_config, tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "val/dice", "val/iou"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert len(events.Scalars("val/dice")) == 3 and len(tags["images"]) == 2  # the 2 validation images


def test_resuming_on_data_whose_split_changed_is_refused(tiny_config, tmp_path, synthetic_data):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    tiny_config.data.root = str(data)
    with pytest.raises(Killed):
        train(tiny_config, tmp_path / "run", on_epoch_end=_kill_after(1))
    lines = (data / "split.csv").read_text().splitlines()
    first_train = next(i for i, line in enumerate(lines) if line.endswith(",train"))
    lines[first_train] = lines[first_train].replace(",train", ",test")  # a training image becomes a test image
    (data / "split.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(MedsegError, match="split differs from the one this run started with"):
        train(None, tmp_path / "run", resume=True)


def test_a_scaled_run_trains_on_scaled_images_and_validates_at_their_own_size(tiny_config):
    """The predictor resamples a validation image by the run's scale: a validation store scaled already would be
    scaled twice, and validation Dice (and the threshold and post-processing chosen on it) would be wrong."""
    from medseg.data.datasets import dataset_items

    tiny_config.data.scale = 0.5
    config, items, _ = dataset_items(tiny_config)
    data = components_module.prepare_data(config, items)
    assert set(data.train.shapes) == {(24, 24)} and set(data.val.shapes) == {(48, 48)}


def test_bfloat16_autocast_trains_on_cpu(tiny_config, tmp_path):
    tiny_config.train.cpu_bf16 = True
    result = train(tiny_config, tmp_path / "run")
    assert np.isfinite(result.history[-1].train_loss)
    weights = load_checkpoint(tmp_path / "run" / "final_model.safetensors").weights
    assert weights and all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())


def test_volume_validation_takes_whole_cases(tmp_path):
    """Bug: train.val_images picked slice indices, so a volume's "per-case" validation Dice and its 3D largest
    component were taken over random, non-adjacent slices stacked as if they were one volume."""
    from medseg.data.datasets import load_items
    from medseg.distributed import DistributedContext
    from medseg.training.components import prepare_data
    from medseg.training.schedule import WallClock
    from medseg.training.trainer import Trainer
    from tests.data import fixtures
    from tests.helpers import tiny_config

    root = fixtures.make_msd(tmp_path / "task", n=8)
    config = tiny_config(root)
    config.data.n_classes, config.data.val_fraction, config.train.val_images = 3, 0.5, 9
    data = prepare_data(config, load_items(root))
    trainer = Trainer(config, tmp_path / "run", DistributedContext(), WallClock(), [], data)
    chosen = [data.val.items[i] for i in trainer.validator.indices]
    cases = {item.case for item in chosen}
    assert len(chosen) <= 9 and cases
    for case in cases:  # every slice of each chosen case, none of the others
        assert sum(item.case == case for item in chosen) == sum(item.case == case for item in data.val.items)
