"""``curves.png``: a run's smoothed training loss, learning rate and validation Dice against step."""

from __future__ import annotations

from medseg.run.history import HistoryRow, StepRow
from medseg.visualize import figure_png, pyplot

MARKED_POINTS = 50  # curves with fewer points mark each one


def curves_png(steps: list[StepRow], history: list[HistoryRow]) -> bytes:
    """Three panels sharing the step axis: the loss and learning rate of ``steps`` (``steps.csv``) and the Dice of
    each validation in ``history``."""
    plt = pyplot()
    fig, (ax_loss, ax_lr, ax_dice) = plt.subplots(1, 3, figsize=(14, 3.5), sharex=True)
    marker = "." if len(steps) < MARKED_POINTS else None
    x = [r.step for r in steps]
    ax_loss.plot(x, [r.loss for r in steps], marker=marker)
    ax_loss.set(title="training loss (smoothed)", xlabel="step")
    ax_lr.plot(x, [r.lr for r in steps], marker=marker, color="tab:orange")
    ax_lr.set(title="learning rate", xlabel="step")
    validated = [r for r in history if r.validated]
    ax_dice.plot([r.step for r in validated], [r.val_dice for r in validated], marker=".", color="tab:green")
    ax_dice.set(title="validation Dice", xlabel="step", ylim=(0, 1))
    return figure_png(fig)
