"""Training rounds started from the labelling page: `medseg train` on the workspace, in a separate process, one at
a time, each in its own run folder (``.medseg-label/runs/round_NNN``) fine-tuning the model in use (``--init``),
watched through its ``progress.json``. A round that ends well becomes the model in use; one that fails or is
stopped leaves the model as it was, and the state says why."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from medseg.claims import Claim, try_claim
from medseg.errors import MedsegError
from medseg.label.workspace import Round, Workspace
from medseg.log import get_logger
from medseg.run.folder import RunFolder
from medseg.run.history import Progress, read_progress
from medseg.run.weights import load_checkpoint


class Busy(MedsegError):
    """A round is training already."""


@dataclass(frozen=True)
class Training:
    """What the page shows of training: the round running (or the last one) and its progress."""

    round: Round | None
    progress: Progress | None
    running: bool


class Rounds:
    """Starts, watches and stops rounds; ``on_model`` is called with the run folder of every round that ends well
    (in the watcher's thread)."""

    def __init__(self, workspace: Workspace, on_model: Callable[[Path], None], overrides: Sequence[str] = ()) -> None:
        self.workspace, self.on_model, self.overrides = workspace, on_model, tuple(overrides)
        self.process: subprocess.Popen | None = None
        self.claim: Claim | None = None
        self.stopping = False
        self.finished = threading.Event()  # set when a round has ended and its model (if good) is in use
        self.lock = threading.Lock()
        state = workspace.state
        if state.rounds and state.rounds[-1].status == "running":  # the server stopped while it trained
            self._end(replace(state.rounds[-1], status="failed", reason="the labelling server stopped while this "
                                                                        "round trained"))

    @property
    def running(self) -> bool:
        return self.process is not None

    def status(self) -> Training:
        rounds = self.workspace.state.rounds
        last = rounds[-1] if rounds else None
        progress = read_progress(self.workspace.folder / last.run) if last is not None else None
        return Training(last, progress, self.running)

    def start(self) -> Round:
        """Start a round now (:class:`Busy` while one trains)."""
        with self.lock:
            if self.process is not None:
                raise Busy("training", "a round is training already; wait for it, or stop it")
            claim = try_claim(self.workspace.folder / "training", "medseg label")
            if claim is None:
                raise Busy("training", "another labelling server trains on this dataset")
            state = self.workspace.state
            name = f"runs/round_{len(state.rounds) + 1:03d}"
            run = self.workspace.folder / name
            labelled = self.workspace.labelled()
            run.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(self.workspace.folder / f"{name}.log", "w", encoding="utf-8") as log:
                    self.process = subprocess.Popen(self._command(run), stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL)
            except OSError as exc:
                claim.release()
                raise MedsegError("training", f"could not start medseg train ({exc.strerror})") from None
            started = Round(name, "running", labelled)
            self.workspace.update(rounds=state.rounds + (started,), new_labels=0)
            self.claim, self.stopping = claim, False
            self.finished.clear()
        get_logger().info("training round %s started (%d labelled images)", name, labelled)
        threading.Thread(target=self._watch, args=(started, self.process), name="medseg-round", daemon=True).start()
        return started

    def _command(self, run: Path) -> list[str]:
        state = self.workspace.state
        length = (["--iterations", str(state.iterations)] if state.iterations
                  else ["--budget", f"{state.budget_minutes}m"])
        init = ["--init", state.model] if state.model else []
        return [sys.executable, "-m", "medseg", "train", "--data", str(self.workspace.root), "--out", str(run),
                *length, *init, "--set", "data.test_fraction=0", "--set", "train.tensorboard=false",
                *(arg for override in self.overrides for arg in ("--set", override))]

    def stop(self) -> None:
        """Ask the round to stop at its next step (it saves its checkpoint; the model in use stays)."""
        with self.lock:
            if self.process is None:
                raise MedsegError("training", "no round is training")
            self.stopping = True
            self.process.send_signal(signal.SIGINT)

    def maybe_start(self) -> Round | None:
        """Start a round if the automatic mode asks for one (every ``auto_every`` new labels) and none trains."""
        state = self.workspace.state
        if state.auto_every and state.new_labels >= state.auto_every and not self.running:
            try:
                return self.start()
            except Busy:
                return None
        return None

    def _watch(self, started: Round, process: subprocess.Popen) -> None:
        code = process.wait()
        run = self.workspace.folder / started.run
        finished = code == 0 and RunFolder(run).finished
        progress = read_progress(run)
        ended = replace(started, status="done" if finished else "stopped" if self.stopping else "failed",
                        reason="" if finished else self._reason(started, code),
                        steps=progress.step if progress else 0, val_dice=_val_dice(run) if finished else None)
        with self.lock:
            self._end(ended)
            self.process, claim, self.claim = None, self.claim, None
        if claim is not None:
            claim.release()
        get_logger().info("training round %s %s%s", started.run, ended.status,
                          f": {ended.reason}" if ended.reason else "")
        if finished:
            self.on_model(run)
        self.finished.set()

    def _reason(self, started: Round, code: int) -> str:
        if self.stopping:
            return "stopped from the page"
        log = (self.workspace.folder / f"{started.run}.log").read_text(encoding="utf-8", errors="replace")
        errors = [line for line in log.splitlines() if line.startswith("medseg: error:")]
        return errors[-1].removeprefix("medseg: error: ") if errors else f"medseg train exited with code {code}"

    def _end(self, ended: Round) -> None:
        """Record how a round ended; one that ended well is the model in use from now on."""
        rounds = self.workspace.state.rounds[:-1] + (ended,)
        model = str(self.workspace.folder / ended.run) if ended.status == "done" else self.workspace.state.model
        self.workspace.update(rounds=rounds, model=model)


def _val_dice(run: Path) -> float | None:
    """The validation Dice the run's selected weights were written with."""
    folder = RunFolder(run)
    info = load_checkpoint(folder.selected_weights()).info
    return None if info.val_dice != info.val_dice else round(info.val_dice, 4)
