"""The plan: choices follow the data (scale and patch from structure widths per class and object sizes, upright
images -> no vertical flips), stay out of the user's way, and round-trip through YAML; `medseg plan` and
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


def _fingerprint(mask: np.ndarray, image: np.ndarray | None = None, copies: int = 3, n_classes: int = 2):
    image = np.random.default_rng(0).random(mask.shape) if image is None else image
    sample = Sample("x", image[..., None].astype(np.float32), mask.astype(np.int64), None)
    return compute_fingerprint([sample] * copies, n_classes)


def _vessels(size=512):
    mask = np.zeros((size, size), np.int64)
    mask[:, ::40] = 1
    mask[:, 1::40] = 1
    mask[:, 2::40] = 1  # 3-px lines
    return mask


def _disk(size: int, radius: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    ys, xs = np.mgrid[:size, :size]
    cy, cx = centre or (size / 2, size / 2)
    return (ys - cy) ** 2 + (xs - cx) ** 2 < radius**2


def _blob(size=512):
    return _disk(size, size // 5).astype(np.int64)


def _small_blobs(size=1024, diameter=10, every=64):
    mask = np.zeros((size, size), bool)
    for y in range(every // 2, size, every):
        for x in range(every // 2, size, every):
            mask |= _disk(size, diameter / 2, (y, x))
    return mask.astype(np.int64)


def _ring_around_blob(size=1024, radius=200, rim=6):
    """Class 1 a large disc, class 2 a thin rim around it (an optic cup inside a disc rim)."""
    mask = _disk(size, radius + rim).astype(np.int64) * 2
    mask[_disk(size, radius)] = 1
    return mask


def test_thin_lines_in_large_images_get_native_patches():
    geometry = input_geometry(_fingerprint(_vessels(1024)))
    assert (geometry.scale, geometry.patch, geometry.whole) == (1.0, 256, False)
    assert "native resolution (foreground median 3 px wide)" in geometry.reason


def test_small_blobs_in_large_images_are_scaled_only_as_far_as_they_stay_visible():
    fingerprint = _fingerprint(_small_blobs())
    geometry = input_geometry(fingerprint)
    assert 0.6 <= geometry.scale <= 0.7 and (geometry.patch, geometry.whole) == (256, False)
    assert 5.9 <= fingerprint.foreground_width * geometry.scale <= 7  # the blobs keep ~6 px, not ~3 as resizing did
    assert "scale 0.6" in geometry.reason and "256-px patches" in geometry.reason


def test_large_blobs_in_small_images_are_whole_at_native_resolution():
    geometry = input_geometry(_fingerprint(_disk(192, 40).astype(np.int64)))
    assert (geometry.scale, geometry.patch, geometry.whole) == (1.0, 192, True)
    small = input_geometry(_fingerprint(_blob(96)))
    assert (small.scale, small.patch, small.whole) == (1.0, 96, True)  # never resized, one padded patch
    sizes = [Sample(f"s{k}", np.zeros((n, n, 1), np.float32), _disk(n, n / 4).astype(np.int64), None)
             for k, n in enumerate((60, 64, 120))]
    mixed = input_geometry(compute_fingerprint(sizes, 2))
    assert (mixed.patch, mixed.whole) == (128, True)  # the largest small image is whole too, not cropped


def test_large_blobs_in_large_images_are_scaled_down_whole():
    geometry = input_geometry(_fingerprint(_disk(1024, 200).astype(np.int64)))
    assert (geometry.scale, geometry.patch, geometry.whole, geometry.resize) == (0.25, 256, True, True)
    assert "each (nearly square) image resized whole to 256x256" in geometry.reason
    wide = np.zeros((512, 1024), np.int64)  # too far from square to be squashed: one scale, whole, aspect kept
    wide[_disk(1024, 150)[256:768]] = 1
    geometry = input_geometry(_fingerprint(wide))
    assert (geometry.scale, geometry.patch, geometry.whole, geometry.resize) == (0.25, 256, True, False)


def test_a_thin_ring_around_a_large_blob_keeps_native_resolution_and_context():
    fingerprint = _fingerprint(_ring_around_blob(), n_classes=3)
    assert fingerprint.foreground_width > 300 and 5 <= fingerprint.class_widths[1] <= 7  # the union hides the rim
    geometry = input_geometry(fingerprint)
    assert geometry.scale == 1.0 and geometry.patch == 512 and not geometry.whole  # the disc needs 2 x 400 px
    assert "class 2 median" in geometry.reason


@pytest.fixture
def inputs():
    return PlanInputs(data="d", classes=("background", "foreground"), classes_source="binary masks", n_train=20,
                      n_val=5, test_fraction=0.0, budget_minutes=0.2, device="cpu", fixed=frozenset(), base=Config())


def test_plan_choices_reasons_and_user_keys(inputs):
    top_bright = np.vstack([np.ones((256, 512)), np.zeros((256, 512))])
    plan = make_plan(_fingerprint(_blob(), top_bright), inputs)
    keys = [choice.key for choice in plan.choices]
    assert keys[:3] == ["data.resize", "data.scale", "data.patch_size"] and plan.value("data.resize") == 256
    assert plan.value("data.scale") is None and plan.value("data.patch_size") is None
    assert plan.value("augment.vflip") is False and plan.value("inference.tta_vflip") is False
    assert all(choice.reason for choice in plan.choices) and plan.probes
    assert plan.value("train.budget_minutes") < 0.2  # planning time counts against the budget
    config = load_config(None, ["data.root=d"], base=plan.mapping())
    assert config.data.resize == 256 and config.model.widths == plan.value("model.widths")
    fixed = make_plan(_fingerprint(_blob()), replace(inputs, fixed=frozenset({"model.widths", "data.resize"}),
                                                     base=Config(data={"resize": 128}, model={"widths": [4, 8]})))
    assert not {"model.widths", "data.resize", "data.scale"} & {c.key for c in fixed.choices}
    assert fixed.probes[0].size == 128


def test_a_wide_patch_gives_way_when_the_budget_cannot_pay_for_it(inputs):
    three = replace(inputs, classes=("background", "disc", "rim"))
    plan = make_plan(_fingerprint(_ring_around_blob(), n_classes=3), three)  # 12 s: far fewer than 1000 steps
    assert list(dict.fromkeys(probe.size for probe in plan.probes)) == [512, 256]
    assert plan.value("data.patch_size") == 256
    assert "the budget allows only" in next(c.reason for c in plan.choices if c.key == "data.scale")


def test_bfloat16_is_planned_where_the_probe_measures_it_faster(inputs, monkeypatch):
    from medseg import plan as plan_module

    for bf16_seconds, planned in ((0.05, True), (0.2, False)):
        timed = []

        def probe(model, options, size, batch_size, *args, precision="float32", **kwargs):
            timed.append(precision == "bfloat16")
            return bf16_seconds if precision == "bfloat16" else 0.1

        monkeypatch.setattr(plan_module, "probe_step", probe)
        plan = make_plan(_fingerprint(_vessels()), inputs)
        assert plan.value("train.cpu_bf16") is planned and timed[:2] == [False, True]
        assert set(timed[2:]) == {planned}  # the network is chosen at the precision that will train
        assert plan.seconds_per_step == (0.05 if planned else 0.1)
    timed.clear()
    deterministic = make_plan(_fingerprint(_vessels()), replace(inputs, base=Config(train={"deterministic": True})))
    assert deterministic.value("train.cpu_bf16") is False and False in timed and True not in timed


def test_on_cuda_the_plan_times_float16_steps_of_the_batch_the_memory_holds(inputs, monkeypatch):
    """The plan's CUDA logic, with the GPU's answers stood in (no GPU here): the batch grows with the free memory,
    and every probe times float16 autocast at that batch."""
    import torch

    from medseg import plan as plan_module

    timed = []
    monkeypatch.setattr(plan_module, "probe_memory", lambda *args, **kwargs: 2 * 2**30)  # 2 GiB at batch 4
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 2**30, 80 * 2**30))
    monkeypatch.setattr(plan_module, "probe_step", lambda model, options, size, batch_size, *args, precision,
                        **kwargs: timed.append((batch_size, precision)) or 0.01)
    plan = make_plan(_fingerprint(_vessels()), replace(inputs, device="cuda:0"))
    assert plan.value("train.batch_size") == 32  # 16 GiB at 32 fits half of 40 GiB; the cap is 32
    assert timed and set(timed) == {(32, "float16")}
    assert "train.cpu_bf16" not in {choice.key for choice in plan.choices}


@pytest.mark.parametrize("peak_gib, free_gib, grown", [(2, 40, 32), (2, 10, 8), (2, 3, 4), (8, 4, 4)])
def test_a_cuda_batch_doubles_while_half_the_free_memory_holds_it(peak_gib, free_gib, grown):
    from medseg.plan import batch_from_memory

    assert batch_from_memory(4, peak_gib * 2**30, free_gib * 2**30) == grown


def test_the_step_estimate_is_the_faster_of_two_probes_of_the_same_step(inputs, monkeypatch):
    """The precision probe already timed the middle U-Net in bfloat16; its second probe ran slower (interference):
    the plan predicts the run from the faster one."""
    from medseg import plan as plan_module

    calls = []

    def probe(model, options, size, batch_size, *args, precision="float32", **kwargs):
        calls.append((options["widths"][0], precision))
        if options["widths"][0] == 32:
            return 10.0  # too slow for the budget
        return {"float32": 0.4, "bfloat16": 0.1 if calls.count((16, "bfloat16")) == 1 else 0.13}[precision]

    monkeypatch.setattr(plan_module, "probe_step", probe)
    plan = make_plan(_fingerprint(_vessels()), replace(inputs, budget_minutes=100))
    assert calls[:2] == [(16, "float32"), (16, "bfloat16")] and (16, "bfloat16") in calls[2:]
    assert plan.value("model.widths") == [16, 32, 64, 128, 256] and plan.seconds_per_step == 0.1


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
    assert "native resolution" in plan.table()


def test_medseg_plan_writes_plan_and_fingerprint(tmp_path, capsys):
    data = make_synthetic_dataset(tmp_path / "data", n_images=8, size=64)
    assert main(["plan", str(data), "--budget", "20s", "--out", str(tmp_path / "p" / "plan.yaml")]) == 0
    assert "wrote" in capsys.readouterr().out
    written = Plan.load(tmp_path / "p" / "plan.yaml")
    assert written.value("data.patch_size") and not written.value("data.resize")  # small images: whole, padded
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


def test_partial_labels_plan_objects_from_dense_masks_and_no_post_processing_without_them(inputs):
    labelled = np.zeros((512, 512), bool)
    labelled[:, :40] = labelled[:, -40:] = True  # scribbles along the edges: no object can be measured
    scribbled = Sample("s", np.random.default_rng(0).random((512, 512, 1)).astype(np.float32),
                       np.where(labelled, _blob(), 0), labelled=labelled)
    partial_only = compute_fingerprint([scribbled] * 3, 2)
    geometry = input_geometry(partial_only)
    assert geometry.scale == 1.0 and "no dense mask to measure" in geometry.reason  # never shrunk blindly
    plan = make_plan(partial_only, inputs)
    assert plan.value("inference.postprocess") == "none"
    dense = Sample("d", scribbled.image, _blob(), None)
    mixed = compute_fingerprint([dense, scribbled, scribbled], 2)
    assert input_geometry(mixed) == replace(input_geometry(compute_fingerprint([dense], 2)),
                                            reason=input_geometry(mixed).reason)
    assert "objects measured on the 1 dense masks, not the 2 partial" in input_geometry(mixed).reason
    choice = next(c for c in make_plan(mixed, inputs).choices if c.key == "inference.postprocess")
    assert choice.value == "auto" and "densely labelled" in choice.reason
