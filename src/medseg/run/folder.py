"""The run folder: every file name in it, the readers of what training left there, and the lock a training run
holds on it.

RUN_DIR layout::

    config.yaml  plan.yaml  fingerprint.json     the resolved config, the plan and the data fingerprint
    checkpoint.safetensors (+ .json)             weights and training state after the last epoch (resume)
    best_model.safetensors / final_model...      the best-by-validation and the last weights
    contract.json                                the run contract: what predict, evaluate and export read
    history.csv  steps.csv  train.log  curves.png  postprocess.json  progress.json
    fold_<k>/                                    cross-validation: one run folder per fold, and beside them
    cv_summary.json  cv_per_image.csv            the out-of-fold summary
    eval/                                        the test-split evaluation
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

from medseg.claims import Claim, holder, try_claim
from medseg.config import Config, save_config
from medseg.data.fingerprint import Fingerprint
from medseg.errors import MedsegError
from medseg.plan import Plan
from medseg.run.contract import RunContract, WeightsName


ResumeRule = Literal["new", "resume", "auto"]  # a fresh folder only; an interrupted run only; whichever it holds
Opening = Literal["fresh", "resume", "finished"]


class FolderInUse(MedsegError):
    """Another process holds the run folder."""


class RunFolder:
    """One run folder (or a cross-validation's top folder) and the paths of its files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # -- file names ----------------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def plan(self) -> Path:
        return self.path / "plan.yaml"

    @property
    def fingerprint(self) -> Path:
        return self.path / "fingerprint.json"

    @property
    def contract(self) -> Path:
        return self.path / "contract.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.safetensors"

    def weights(self, name: WeightsName) -> Path:
        """``best_model.safetensors`` or ``final_model.safetensors``."""
        return self.path / f"{name}.safetensors"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def steps(self) -> Path:
        return self.path / "steps.csv"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def postprocess(self) -> Path:
        return self.path / "postprocess.json"

    @property
    def progress(self) -> Path:
        """How far a training run is (``progress.json``), for whoever watches it from another process."""
        return self.path / "progress.json"

    @property
    def cv_summary(self) -> Path:
        return self.path / "cv_summary.json"

    @property
    def cv_per_image(self) -> Path:
        return self.path / "cv_per_image.csv"

    @property
    def evaluation(self) -> Path:
        """The folder of the test-split evaluation."""
        return self.path / "eval"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def fold(self, k: int) -> "RunFolder":
        return RunFolder(self.path / f"fold_{k}")

    # -- state ---------------------------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """A training run wrote its first checkpoint here (it can be resumed)."""
        return self.checkpoint.is_file()

    @property
    def finished(self) -> bool:
        """Training ended here and wrote the contract."""
        return self.contract.is_file()

    def folds(self, which: Sequence[int] | None = None) -> list["RunFolder"]:
        """The fold folders of a cross-validation run, all or the chosen ``which``; [] otherwise."""
        found = {int(p.name.split("_", 1)[1]): RunFolder(p) for p in self.path.glob("fold_*")
                 if p.is_dir() and p.name.split("_", 1)[1].isdigit()}
        if which is None:
            return [found[k] for k in sorted(found)]
        missing = [k for k in which if k not in found]
        if missing:
            raise MedsegError(self.path, f"has no fold {missing[0]} (folds: {sorted(found) or 'none'})")
        return [found[k] for k in which]

    def read_contract(self) -> RunContract:
        if not self.finished:
            raise MedsegError(self.path, f"no {self.contract.name}: not a finished medseg run folder")
        return RunContract.load(self.contract)

    def selected_weights(self, which: WeightsName | None = None) -> Path:
        """The weights file ``which``, by default the one the run selected (``best_model`` before it finished)."""
        if which is None:
            which = self.read_contract().selected if self.finished else "best_model"
        path = self.weights(which)
        if not path.is_file():
            raise MedsegError(self.path, f"no {path.name} in this run folder")
        return path

    @classmethod
    def default_for(cls, data: str | Path) -> "RunFolder":
        """``runs/<dataset folder name>``, numbered when taken."""
        base = Path("runs") / Path(data).resolve().name
        candidate, number = base, 2
        while candidate.exists():
            candidate, number = base.with_name(f"{base.name}-{number}"), number + 1
        return cls(candidate)

    def opening(self, rule: ResumeRule) -> Opening:
        """The one decision on resuming: what the folder holds (``fresh``, an interrupted run to ``resume``, or a
        ``finished`` one), checked against what ``rule`` allows."""
        if rule == "new" and (self.started or self.finished):
            raise MedsegError(self.path, "already holds a run; use --resume to continue it or choose another --out")
        if rule == "resume" and not self.started:
            raise MedsegError(self.path, f"no {self.checkpoint.name} to resume from")
        if self.finished and rule == "auto":
            return "finished"
        return "resume" if self.started else "fresh"

    def record_inputs(self, config: Config, plan: Plan | None, fingerprint: Fingerprint | None = None) -> None:
        """Write what a fresh run starts from: ``config.yaml``, and ``plan.yaml`` and ``fingerprint.json`` when
        given."""
        save_config(config, self.config)
        if plan is not None:
            plan.save(self.plan)
        if fingerprint is not None:
            fingerprint.save(self.fingerprint)

    def lock(self, owner: str) -> Claim:
        """Hold this folder for one process until the claim is released (or the process ends); another process
        that holds it gets a one-line error naming that process."""
        claim = try_claim(self.path, owner)
        if claim is None:
            raise FolderInUse(self.path, f"is in use by {holder(self.path)}; wait for it to finish or choose "
                                         "another --out")
        return claim


def resolve_weights(run_or_file: str | Path, which: WeightsName | None = None) -> Path:
    """A weights file: the file itself, or in a run folder ``which`` (default: the weights the run selected)."""
    path = Path(run_or_file)
    return RunFolder(path).selected_weights(which) if path.is_dir() else path


def member_weights(run: str | Path, folds: Sequence[int] | None = None) -> tuple[list[Path], RunContract | None]:
    """The weights files a run predicts with: a cross-validation run's fold weights (all, or ``folds``) with the
    ensemble's contract; else the run's selected weights, or the weights file itself, with None (the file holds
    its contract)."""
    path = Path(run)
    members = RunFolder(path).folds(folds) if path.is_dir() else []
    if not members:
        return [resolve_weights(path)], None
    return [member.selected_weights() for member in members], RunFolder(path).read_contract()


def run_contract(run_dir: str | Path) -> RunContract:
    """``RUN_DIR/contract.json``."""
    return RunFolder(run_dir).read_contract()
