"""The plan: choices follow the data (thin structures -> native patches, large objects -> resize, upright images
-> no vertical flips), stay out of the user's way, and round-trip through YAML; `medseg plan` and
`medseg train --budget` end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import yaml

from medseg.cli import main
from medseg.config import Config, load_config
from medseg.data.datasets import Sample
from medseg.data.fingerprint import compute_fingerprint
from medseg.data.synthetic import make_synthetic_dataset
from medseg.errors import MedsegError
from medseg.plan import Plan, PlanInputs, input_geometry, make_plan
from medseg.run.history import read_history


def _fingerprint(mask: np.ndarray, image: np.ndarray | None = None, copies: int = 3):
    image = np.random.default_rng(0).random(mask.shape) if image is None else image
    sample = Sample("x", image[..., None].astype(np.float32), mask.astype(np.int64), None)
    return compute_fingerprint([sample] * copies, 2)


def _vessels(size=512):
    mask = np.zeros((size, size), np.int64)
    mask[:, ::40] = 1
    mask[:, 1::40] = 1
    mask[:, 2::40] = 1  # 3-px lines
    return mask


def _blob(size=512):
    ys, xs = np.mgrid[:size, :size]
    return ((ys - size // 2) ** 2 + (xs - size // 2) ** 2 < (size // 5) ** 2).astype(np.int64)


def test_thin_structures_get_native_patches_and_large_objects_get_resizing():
    mode, size, reason = input_geometry(_fingerprint(_vessels()))
    assert (mode, size) == ("patch", 256) and "thin structures" in reason and "median width 3 px" in reason
    mode, size, reason = input_geometry(_fingerprint(_blob()))
    assert (mode, size) == ("resize", 256) and "large objects" in reason
    mode, size, _ = input_geometry(_fingerprint(_blob(96)))
    assert (mode, size) == ("patch", 96)  # small images: whole, at native resolution


@pytest.fixture
def inputs():
    return PlanInputs(data="d", classes=("background", "foreground"), classes_source="binary masks", n_train=20,
                      n_val=5, test_fraction=0.0, budget_minutes=0.2, device="cpu", fixed=frozenset(), base=Config())


def test_plan_choices_reasons_and_user_keys(inputs):
    top_bright = np.vstack([np.ones((256, 512)), np.zeros((256, 512))])
    plan = make_plan(_fingerprint(_blob(), top_bright), inputs)
    keys = [choice.key for choice in plan.choices]
    assert keys[:2] == ["data.resize", "data.patch_size"] and plan.value("data.patch_size") is None
    assert plan.value("augment.vflip") is False and plan.value("inference.tta_vflip") is False
    assert all(choice.reason for choice in plan.choices) and plan.probes
    assert plan.value("train.budget_minutes") < 0.2  # planning time counts against the budget
    config = load_config(None, ["data.root=d"], base=plan.mapping())
    assert config.data.resize == 256 and config.model.widths == plan.value("model.widths")
    fixed = make_plan(_fingerprint(_blob()), replace(inputs, fixed=frozenset({"model.widths", "data.resize"})))
    assert "model.widths" not in [c.key for c in fixed.choices] and "data.resize" not in [c.key for c in fixed.choices]


def test_planning_longer_than_the_budget_still_leaves_training_time(inputs):
    plan = make_plan(_fingerprint(_blob()), inputs, spent_seconds=60.0)  # the fingerprint alone took 5x the budget
    assert plan.value("train.budget_minutes") == pytest.approx(0.02)  # 10% of 0.2 min
    assert "training gets 10% of it anyway" in next(c.reason for c in plan.choices if c.key == "train.budget_minutes")


def test_plan_yaml_round_trip_and_edits(inputs, tmp_path):
    plan = make_plan(_fingerprint(_vessels()), inputs)
    plan.save(tmp_path / "plan.yaml")
    assert Plan.load(tmp_path / "plan.yaml") == plan
    mapping = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    next(c for c in mapping["choices"] if c["key"] == "optim.lr")["value"] = 3e-4  # the user edits a value
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(mapping))
    assert Plan.load(tmp_path / "plan.yaml").value("optim.lr") == 3e-4
    next(c for c in mapping["choices"] if c["key"] == "optim.schedule")["value"] = "cosin"
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(mapping))
    with pytest.raises(MedsegError, match="plan.yaml: optim.schedule: 'cosin' is not one of"):
        Plan.load(tmp_path / "plan.yaml")
    assert "thin structures" in plan.table()


def test_medseg_plan_writes_plan_and_fingerprint(tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "data", n_images=8, size=64)
    assert main(["plan", str(data), "--budget", "20s", "--out", str(tmp_path / "p" / "plan.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "data.resize" in printed and "wrote" in printed
    assert json.loads((tmp_path / "p" / "fingerprint.json").read_text())["n_images"] == 7  # train + val, not test


@pytest.mark.slow
def test_train_with_a_budget_plans_trains_and_evaluates(tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "data", n_images=24, size=64)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--budget", "1m", "--out", str(run)]) == 0
    for name in ("plan.yaml", "fingerprint.json", "contract.json", "final_model.safetensors", "eval/summary.json"):
        assert (run / name).is_file(), name
    contract = json.loads((run / "contract.json").read_text())
    assert contract["plan"]["budget_minutes"] == 1.0 and contract["selected"] == "final_model"
    last = read_history(run)[-1]
    assert 45 < last.seconds < 70  # trained to the deadline (planning time taken off the minute)
    assert last.lr < 1e-4  # and annealed
    dice = json.loads((run / "eval" / "summary.json").read_text())["metrics"]["dice"]["mean"]
    assert dice > 0.6


def test_classes_in_a_fixed_order_are_never_flipped_across_it(inputs):
    """Class 1 always left of class 2 (a head and a tail): no horizontal flips in training or TTA, no rotations;
    vertical flips keep the order and stay. Concentric classes (no order) keep every flip."""
    rng = np.random.default_rng(0)
    ordered, concentric = [], []
    for shift in range(4):
        mask = np.zeros((48, 48), np.int64)
        mask[10:30, 5 + shift:20], mask[10:30, 24:40 + shift] = 1, 2
        ring = _blob(48)
        dy, dx = ((2, 2), (-2, -2), (2, -2), (-2, 2))[shift]
        ring[20 + dy:28 + dy, 20 + dx:28 + dx] = 2
        for masks, labels in ((ordered, mask), (concentric, ring)):
            masks.append(Sample("x", rng.random((48, 48, 1)).astype(np.float32), labels, None))
    three = replace(inputs, classes=("background", "head", "tail"))
    fingerprint = compute_fingerprint(ordered, 3)
    assert fingerprint.class_layout == (0.0, 1.0)
    plan = make_plan(fingerprint, three)
    assert plan.value("augment.flip") is False and plan.value("inference.tta_hflip") is False
    assert plan.value("augment.vflip") is True and plan.value("augment.rotate90") is False
    config = load_config(None, ["data.root=d"], base=plan.mapping())
    assert config.inference.tta and config.inference.tta_vflip and not config.inference.tta_hflip
    free = make_plan(compute_fingerprint(concentric, 3), three)
    assert "augment.flip" not in [c.key for c in free.choices] and free.value("augment.rotate90") is True
