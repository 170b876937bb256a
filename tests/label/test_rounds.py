"""Training rounds of the labelling page: a round that fails or is stopped leaves the model in use and says why,
and a round the server did not see end is marked failed when it starts again."""

from __future__ import annotations

from dataclasses import replace

from medseg.label.rounds import Rounds
from medseg.label.workspace import Round, Workspace
from tests.label.test_api import labelling_folder

TINY = ["model.widths=[4,8,16]", "data.patch_size=32", "train.batch_size=2"]


def workspace_with(tmp_path) -> Workspace:
    return Workspace(labelling_folder(tmp_path / "data", unreadable=False))


def test_a_failed_round_keeps_the_model_and_says_why(tmp_path):
    """A round that ends well is the model in use; the next one fails (its labels were removed: nothing to
    validate on) and the model stays, the reason is medseg train's one line."""
    workspace = workspace_with(tmp_path)
    workspace.update(iterations=5)
    models = []
    rounds = Rounds(workspace, models.append, TINY)
    rounds.start()
    rounds.finished.wait(timeout=300)
    good = workspace.state.model
    assert workspace.state.rounds[-1].status == "done" and good.endswith("round_001") and len(models) == 1
    for path in sorted((workspace.root / "masks").iterdir())[1:]:
        path.unlink()
    rounds.start()
    rounds.finished.wait(timeout=300)
    ended = workspace.state.rounds[-1]
    assert ended.status == "failed" and "split is empty" in ended.reason and "\n" not in ended.reason
    assert workspace.state.model == good and len(models) == 1 and not rounds.running


def test_a_stopped_round_keeps_the_model(tmp_path):
    workspace = workspace_with(tmp_path)
    workspace.update(budget_minutes=10)
    rounds = Rounds(workspace, lambda run: None, TINY)
    rounds.start()
    rounds.stop()
    rounds.finished.wait(timeout=300)
    ended = workspace.state.rounds[-1]
    assert (ended.status, ended.reason) == ("stopped", "stopped from the page") and workspace.state.model is None


def test_a_round_the_server_did_not_see_end_is_marked_failed(tmp_path):
    workspace = workspace_with(tmp_path)
    workspace.update(rounds=(Round("runs/round_001", "running", 3),))
    Rounds(Workspace(workspace.root), lambda run: None)
    (ended,) = Workspace(workspace.root).state.rounds
    assert ended == replace(ended, status="failed") and "stopped while this round trained" in ended.reason
