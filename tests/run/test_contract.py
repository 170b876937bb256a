"""The run contract: a round trip, strict keys, migration of old headers, refusal of newer schemas; and the typed
file loader it (and the plan, the fingerprint and study records) is read with."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pytest
from pydantic import ConfigDict

from medseg.run.weights import load_checkpoint, save_checkpoint
from medseg.run.contract import SCHEMA_VERSION, RunContract, contract_from_dict
from medseg.errors import MedsegError
from medseg.models import create_model
from medseg.typed_file import TypedFile
from tests.helpers import contract_for, save_model


@pytest.fixture
def contract():
    return contract_for(create_model("unet", 1, 1, widths=(4, 8)), n_classes=3)


def test_round_trip_through_json(contract, tmp_path):
    contract.save(tmp_path / "contract.json")
    assert RunContract.load(tmp_path / "contract.json") == contract
    assert contract.inference.class_names == ("background", "class_1", "class_2")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["inference"].pop("threshold"), "missing key 'inference.threshold'"),
    (lambda d: d["inference"].update(treshold=0.4), "unknown key 'inference.treshold'"),
    (lambda d: d.update(plan_file="x"), "unknown key 'plan_file'"),
    (lambda d: d.update(selected="latest"), "selected"),
])
def test_missing_unknown_or_invalid_keys_are_errors_naming_the_key(contract, tmp_path, edit, message):
    mapping = contract.to_dict()
    edit(mapping)
    (tmp_path / "contract.json").write_text(json.dumps(mapping))
    with pytest.raises(MedsegError, match=f"contract.json: run contract: .*{message}"):
        RunContract.load(tmp_path / "contract.json")


def test_a_newer_schema_is_refused(contract):
    mapping = {**contract.to_dict(), "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(MedsegError, match="newer than this medseg understands"):
        contract_from_dict(mapping, "x.safetensors")


def test_a_schema_0_checkpoint_is_migrated(tmp_path):
    """Weights written by medseg 0.1 (untyped metadata in the header) still load and predict."""
    import torch
    from safetensors.torch import save_file

    model = create_model("unet", 1, 1, widths=(4, 8))
    legacy = {"model": asdict(model.spec),
              "data": {"n_classes": 2, "normalize": "unit", "patch_size": 64, "resize": None, "channels": 1},
              "threshold": 0.4, "class_names": ["bg", "cell"], "epoch": 7, "step": 70, "val_dice": 0.8,
              "training_data": {"root": "/data", "fingerprint": "abc", "train_ids": ["a"], "val_ids": ["b"],
                                "test_ids": ["c"]}}
    tensors = {f"model/{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"medseg": json.dumps(legacy)})
    checkpoint = load_checkpoint(tmp_path / "old.safetensors")
    inference = checkpoint.contract.inference
    assert (inference.normalize, inference.patch_size, inference.threshold) == ("unit", 64, 0.4)
    assert inference.class_names == ("bg", "cell") and checkpoint.contract.data.splits.test == ("c",)
    assert (checkpoint.info.epoch, checkpoint.info.step) == (7, 70)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(checkpoint.weights[key], value)


def test_weights_files_carry_the_contract(contract, tmp_path):
    path = save_model(tmp_path / "w.safetensors", create_model("unet", 1, 3, widths=(4, 8)), n_classes=3)
    loaded = load_checkpoint(path)
    assert loaded.contract.model.out_channels == 3 and loaded.contract.inference.n_classes == 3
    save_checkpoint(path, loaded.weights, loaded.contract, loaded.info)
    assert json.loads((tmp_path / "w.json").read_text())["contract"]["schema_version"] == SCHEMA_VERSION


@dataclass(frozen=True)
class Note:
    __pydantic_config__ = ConfigDict(extra="forbid")
    schema_version: int
    text: str
    count: int = 1


def _migrate(mapping, where):
    return {"schema_version": 2, "text": mapping["words"]}


NOTE = TypedFile(Note, "note", version=2, migrate=_migrate)


@pytest.mark.parametrize("name", ["note.json", "note.yaml", "note.yml"])
def test_typed_files_are_json_or_yaml_by_suffix(tmp_path, name):
    (tmp_path / name).write_text(json.dumps({"schema_version": 2, "text": "hi", "count": 3}))  # JSON is YAML
    assert NOTE.load(tmp_path / name) == Note(2, "hi", 3)


def test_typed_files_migrate_older_and_refuse_newer_schemas(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"words": "hi"}))  # no schema_version: version 0
    assert NOTE.load(tmp_path / "old.json") == Note(2, "hi")
    (tmp_path / "new.yaml").write_text("schema_version: 3\ntext: hi\n")
    with pytest.raises(MedsegError, match=r"new.yaml: note schema 3 is newer than this medseg understands \(2\)"):
        NOTE.load(tmp_path / "new.yaml")
    with pytest.raises(MedsegError, match=r"x: note schema 1 is older than this medseg reads \(2\)"):
        TypedFile(Note, "note", version=2).validate({"schema_version": 1, "text": "hi"}, "x")


@pytest.mark.parametrize(("content", "message"), [
    ('{"schema_version": 2}', "note: missing key 'text'"),
    ('{"schema_version": 2, "text": "hi", "cuont": 2}', "note: unknown key 'cuont'"),
    ('{"schema_version": 2, "text": "hi", "count": "many"}', "note: count: Input should be a valid integer"),
    ('[1, 2]', "the note is not a mapping"),
    ('{"schema_version": 2,', "cannot read the note"),
])
def test_typed_file_errors_are_one_line_naming_the_file_and_key(tmp_path, content, message):
    (tmp_path / "note.json").write_text(content)
    with pytest.raises(MedsegError) as info:
        NOTE.load(tmp_path / "note.json")
    assert str(info.value).startswith(f"{tmp_path / 'note.json'}: {message}") and "\n" not in str(info.value)
