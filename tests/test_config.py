"""The config system: YAML, overrides, unknown keys and wrong types."""

from __future__ import annotations

import pytest

from medseg.config import load_config, save_config
from medseg.errors import MedsegError


def test_overrides_parse_yaml_values():
    config = load_config(None, ["model.widths=[32,32,64,128,256]", "optim.lr=1e-4", "train.deterministic=true",
                                "model.options.skips=2", "data.patch_size=null"])
    assert config.model.widths == [32, 32, 64, 128, 256] and config.optim.lr == 1e-4
    assert config.train.deterministic is True and config.model.options == {"skips": 2}
    assert config.data.patch_size is None


def test_wrong_type_names_the_key():
    with pytest.raises(MedsegError, match="train.epochs: expected int"):
        load_config(None, ["train.epochs=many"])


def test_yaml_round_trip_and_file_errors(tmp_path):
    config = load_config(None, ["model.name=unetpp", "loss.name=bce_dice"])
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    (tmp_path / "bad.yaml").write_text("optim:\n  lrate: 3\n")
    with pytest.raises(MedsegError, match="bad.yaml: unknown key 'optim.lrate'"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize(("key", "typo", "suggestion"), [
    ("optim.name", "adamm", "adam"), ("optim.schedule", "cosin", "cosine"), ("data.normalize", "z-score", "zscore"),
    ("loss.name", "bce-dice", "bce_dice"), ("data.format", "tiff_stack", "tiff-stack"),
    ("train.select", "fianl", "final"),
])
def test_enumerated_options_are_checked_at_load_time_with_a_suggestion(key, typo, suggestion):
    with pytest.raises(MedsegError, match=f"{key}: '{typo}' is not one of .*did you mean '{suggestion}'"):
        load_config(None, [f"{key}={typo}"])


def test_out_of_range_values_name_the_key():
    with pytest.raises(MedsegError, match="data.val_fraction: input should be less than 1"):
        load_config(None, ["data.val_fraction=1.5"])
    with pytest.raises(MedsegError, match="data.fold: 'al' is not one of all"):
        load_config(None, ["data.fold=al"])
    assert load_config(None, ["data.fold=all"]).data.fold == "all"
    assert load_config(None, ["data.fold=2"]).data.fold == 2


def test_every_dataset_format_has_an_adapter():
    from typing import get_args

    from medseg.config import DatasetFormat
    from medseg.data.datasets import ADAPTERS

    assert set(get_args(DatasetFormat)) == {"auto", *ADAPTERS}


def test_fields_that_must_agree():
    with pytest.raises(MedsegError, match="data.class_names: 2 names for data.n_classes=3"):
        load_config(None, ["data.n_classes=3", "data.class_names=[bg,cell]"])
    with pytest.raises(MedsegError, match="must leave images for training"):
        load_config(None, ["data.val_fraction=0.5", "data.test_fraction=0.5"])


def test_leaf_keys_are_dotted_and_model_options_is_one_leaf():
    from medseg.config import config_keys, leaf_keys, parse_overrides

    mapping = parse_overrides(["optim.lr=1e-3", "model.options.skips=2", "data.patch_size=null", "train.seed=1"])
    assert leaf_keys(mapping) == ["optim.lr", "model.options", "data.patch_size", "train.seed"]
    assert leaf_keys({}) == [] and {"optim.lr", "model.options", "train.budget_minutes"} <= set(config_keys())
