"""`medseg train --init RUN`: the source's weights before any step, a new last layer for another class count, the
source's network, geometry and split kept (and said so in the plan), and one-line refusals."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml

import medseg
from medseg.cli import main
from medseg.data.datasets import load_items
from medseg.distributed import DistributedContext
from medseg.models import create_model
from medseg.run.folder import RunFolder, resolve_weights
from medseg.run.weights import load_checkpoint, load_model
from medseg.training.components import prepare_data
from medseg.training.init import InitSource, start_from
from medseg.training.schedule import WallClock
from medseg.training.trainer import Trainer
from tests.data import fixtures

SMALL = ["--patch-size", "32", "--batch-size", "2", "--set", "train.steps_per_epoch=2", "--set",
         "train.val_time_share=null", "--set", "train.tensorboard=false", "--iterations", "2"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A tiny binary run on the synthetic cells."""
    from medseg.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("init")
    data = make_synthetic_dataset(root / "data", n_images=12, size=48)
    out = root / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--set", "model.widths=[4,8,16]", *SMALL]) == 0
    return out, data


def test_a_run_starts_with_the_source_runs_outputs(source_run, tmp_path):
    run, data = source_run
    config = medseg.load_config(RunFolder(run).config)
    config.train.init = str(run)
    trainer = Trainer(config, tmp_path / "b", DistributedContext(), WallClock(), [],
                      prepare_data(config, load_items(data)))
    source, _ = load_model(resolve_weights(run))
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(trainer.components.model.eval()(x), source(x), atol=1e-6)


def test_another_class_count_replaces_only_the_last_layer(source_run):
    run, _ = source_run
    init = InitSource.load(run)
    spec = init.contract.model
    model = create_model(spec.name, spec.in_channels, 3, **spec.options)
    fresh = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    start_from(model, init)
    source = init.contract.model.build().state_dict()
    loaded = {name for name, tensor in model.state_dict().items()
              if name in source and source[name].shape == tensor.shape}
    replaced = set(model.state_dict()) - loaded
    assert replaced and all(model.state_dict()[name].shape[0] == 3 for name in replaced)
    assert all(torch.equal(model.state_dict()[name], fresh[name]) for name in replaced)
    checkpoint = load_checkpoint(init.weights).weights
    assert all(torch.equal(model.state_dict()[name], checkpoint[name]) for name in loaded)


def test_init_keeps_the_network_geometry_and_split_and_the_plan_says_so(source_run, tmp_path, capsys):
    """After images are added, the fine-tuned run keeps the source's test images as its test split; the new images
    train."""
    run, data = source_run
    grown = tmp_path / "grown"
    shutil.copytree(data, grown)
    (grown / "split.csv").unlink()  # the source's recorded split is what keeps the test images apart
    for name in ("extra_0", "extra_1"):
        shutil.copy(grown / "images" / "cells_011.png", grown / "images" / f"{name}.png")
        shutil.copy(grown / "masks" / "cells_011.png", grown / "masks" / f"{name}.png")
    out = tmp_path / "tuned"
    assert main(["train", "--data", str(grown), "--out", str(out), "--init", str(run), *SMALL,
                 "--set", "model.widths=[4,8,16]"]) == 0  # the network RUN has: no conflict
    source, tuned = RunFolder(run).read_contract(), RunFolder(out).read_contract()
    assert tuned.model == source.model and tuned.inference.patch_size == source.inference.patch_size
    assert tuned.data.splits.test == source.data.splits.test
    assert {"extra_0", "extra_1"} <= set(tuned.data.splits.train)
    plan = yaml.safe_load(RunFolder(out).plan.read_text())
    reasons = {choice["key"]: choice["reason"] for choice in plan["choices"]}
    assert "(--init): the network its weights fit" in reasons["model.name"]
    assert "(--init): the input its weights were trained on" in reasons["data.patch_size"]


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_what_the_weights_cannot_start_is_refused_in_one_line(source_run, tmp_path, capsys):
    run, data = source_run
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a"), "--init", str(run),
                 "--model", "segnet", *SMALL]) == 2
    assert "--init: " in (line := _error(capsys)) and "cannot change it" in line
    rgb = fixtures.make_drive(tmp_path / "drive")
    assert main(["train", "--data", str(rgb), "--out", str(tmp_path / "b"), "--init", str(run), *SMALL]) == 2
    assert "takes 1-channel images" in _error(capsys)
    volumes = fixtures.make_msd(tmp_path / "task", n=3)
    assert main(["train", "--data", str(volumes), "--out", str(tmp_path / "c"), "--init", str(run), *SMALL]) == 2
    assert "was trained on 2D images" in _error(capsys)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "d"), "--init", str(tmp_path / "nope"),
                 *SMALL]) == 2
    assert "no such run folder" in _error(capsys)
    assert not np.any([(tmp_path / name / "checkpoint.safetensors").exists() for name in "abcd"])
