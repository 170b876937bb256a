"""What a finished run keeps: its weights (final or best) and its post-processing, chosen once after training."""

from __future__ import annotations

import copy
from dataclasses import asdict, replace

import torch

from medseg.config import Config, Selection
from medseg.errors import MedsegError
from medseg.files import atomic_write_json
from medseg.inference.postprocess import PostprocessChoice, ValidationCase, choose_postprocessing
from medseg.log import get_logger
from medseg.run.contract import RunContract, WeightsName
from medseg.run.folder import RunFolder
from medseg.run.weights import load_checkpoint, load_weights_into
from medseg.training.validation import Validator


def selected_weights(select: Selection, run: RunFolder, anneals: bool, validated: bool,
                     is_main: bool) -> WeightsName:
    """``train.select``; ``auto`` keeps the final weights when the schedule anneals (or there is no validation),
    else the best by smoothed validation Dice. Only rank 0 sees the run folder's files."""
    has_best = run.weights("best_model").is_file() if is_main else True
    if select == "auto":
        select = "final" if anneals or not validated or not has_best else "best"
    if select == "best" and not has_best:
        raise MedsegError("train.select", "best weights were requested, but no validation ever ran")
    return "final_model" if select == "final" else "best_model"


def keep(config: Config, run: RunFolder, contract: RunContract, model: torch.nn.Module, anneals: bool,
         validator: Validator, last_cases: list[ValidationCase]) -> RunContract:
    """``contract`` with the weights the run keeps and, when ``inference.postprocess`` is ``auto`` (rank 0, with
    validation images), the threshold and post-processing chosen on those weights' validation predictions and
    recorded in ``postprocess.json``. ``last_cases``: the final weights' predictions, if the last validation kept
    them."""
    context = validator.context
    selected = selected_weights(config.train.select, run, anneals, bool(validator.indices), context.is_main)
    contract = replace(contract, selected=selected)
    if not context.is_main or not validator.indices or config.inference.postprocess != "auto":
        return contract
    cases = last_cases  # this rank's shard under DDP: then predict them all here
    if selected == "best_model" or not cases or context.enabled:
        cases = validator.cases(_weights(model, run, selected))
    choice = choose_postprocessing(cases, config.data.n_classes, config.inference.threshold)
    _record(run, choice, selected)
    return contract.with_inference(threshold=choice.threshold, postprocess=choice.postprocess)


def _weights(model: torch.nn.Module, run: RunFolder, selected: WeightsName) -> torch.nn.Module:
    """``model`` with the ``selected`` weights (a copy holding the best weights, or the model itself)."""
    if selected != "best_model":
        return model
    path = run.weights(selected)
    best = copy.deepcopy(model)
    load_weights_into(best, load_checkpoint(path).weights, path)
    return best


def _record(run: RunFolder, choice: PostprocessChoice, selected: WeightsName) -> None:
    atomic_write_json(run.postprocess, {
        "images": choice.images, "weights": selected, "threshold": choice.threshold,
        "postprocess": asdict(choice.postprocess), "dice_before": choice.dice_before,
        "dice_after": choice.dice_after, "steps": list(choice.steps)})
    if not choice.images:
        get_logger().info("post-processing: %s", choice.steps[0])
        return
    get_logger().info("post-processing chosen on %d densely labelled validation images: threshold %.2f, %s (Dice "
                      "%.4f -> %.4f)", choice.images, choice.threshold, choice.postprocess.describe(),
                      choice.dice_before, choice.dice_after)
