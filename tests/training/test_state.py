"""The run state: one object through a checkpoint and back; a foreign state is refused; stop requests."""

from __future__ import annotations

import math
import signal

import pytest
import torch

from medseg.run.weights import flatten_state, unflatten_state
from medseg.run.history import HistoryRow, StepRow
from medseg.training.state import RunState
from medseg.training.trainer import StopRequest
from medseg.errors import MedsegError


def test_run_state_round_trip(tmp_path):
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.ones(3))])
    optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
    optimizer.step()
    state = RunState(epoch=2, step=17, epoch_step=3, elapsed=12.5, val_seconds=1.25, val_cost=0.5, best_score=0.8,
                     best_epoch=2, smoothed_dice=0.79, smoothed_loss=0.85,
                     history=[HistoryRow(1, 8, 1e-3, 0.9, val_dice=0.7)], steps=[StepRow(10, 3.5, 0.85, 1e-3)],
                     optimizer=optimizer.state_dict(), scaler={}, schedule={"scale": 1.0},
                     torch_rng=torch.get_rng_state())
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(state.to_checkpoint(), tensors, "state/")
    restored = RunState.from_checkpoint(unflatten_state(skeleton, tensors), tmp_path)
    assert (restored.epoch, restored.step, restored.epoch_step, restored.elapsed) == (2, 17, 3, 12.5)
    assert restored.history == state.history and math.isnan(restored.history[0].val_iou)
    assert restored.steps == state.steps and restored.smoothed_loss == 0.85
    torch.testing.assert_close(restored.torch_rng, state.torch_rng)
    torch.optim.Adam([torch.nn.Parameter(torch.ones(3))]).load_state_dict(restored.optimizer)


def test_state_from_another_version_is_refused(tmp_path):
    values = RunState().to_checkpoint()
    values["round"] = values.pop("epoch")
    with pytest.raises(MedsegError, match=r"missing \['epoch'\], unknown \['round'\]"):
        RunState.from_checkpoint(values, tmp_path)


def test_first_signal_requests_a_stop_and_a_second_interrupts():
    stop = StopRequest()
    stop(signal.SIGTERM, None)
    assert stop.requested and not stop.forced  # the loop stops at the next step boundary and saves
    with pytest.raises(KeyboardInterrupt):
        stop(signal.SIGINT, None)
    assert stop.forced  # interrupted anywhere: nothing is saved
