"""The plan: from a dataset's fingerprint, a time budget (or a step count) and a few timed probe steps to a training
recipe, each choice with a one-line reason. A plan is a set of config values, so the user can read it, edit it and
pass it back (`medseg train --plan plan.yaml`); explicit flags and config files still override it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import ConfigDict

from medseg.config import Config, merge, set_key, validate_config
from medseg.data.datasets import (Item, channel_modalities, default_class_names, input_channels, load_sample,
                                  split_items)
from medseg.data.fingerprint import Fingerprint, compute_fingerprint, spread, volume_facts
from medseg.data.readers import Reader
from medseg.data.store import batch_seconds
from medseg.device import autocast_dtype, configure_backends, select_device, training_memory_format
from medseg.errors import MedsegError
from medseg.files import atomic_write_text
from medseg.log import get_logger
from medseg.typed_file import TypedFile

PLAN_SCHEMA = 1
_STRICT = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class PlanChoice:
    """One config value the plan sets, and why."""

    __pydantic_config__ = _STRICT
    key: str
    value: Any
    reason: str


@dataclass(frozen=True)
class Probe:
    """A timed candidate: seconds per training step of a network at an input size and batch."""

    __pydantic_config__ = _STRICT
    label: str
    size: int
    batch_size: int
    seconds_per_step: float


def choices_mapping(choices: Sequence[PlanChoice]) -> dict[str, Any]:
    """Plan choices as a nested config mapping."""
    result: dict[str, Any] = {}
    for choice in choices:
        set_key(result, choice.key, choice.value)
    return result


def under_user_values(choices: Sequence[PlanChoice], config: Config) -> Config:
    """``config`` with ``choices`` filled in under every value the user set."""
    return validate_config(merge(choices_mapping(choices), config.model_dump(exclude_unset=True)))


@dataclass(frozen=True)
class Plan:
    __pydantic_config__ = _STRICT
    schema_version: int
    data: str
    budget_minutes: float | None  # None: planned for a step count
    device: str
    choices: tuple[PlanChoice, ...]
    probes: tuple[Probe, ...]
    seconds_per_step: float | None = None  # the chosen network's probed step time: the run's planned speed

    def mapping(self) -> dict[str, Any]:
        """The plan's choices as a nested config mapping."""
        return choices_mapping(self.choices)

    def apply(self, config: Config) -> Config:
        """``config`` with the plan's choices under every value the user set."""
        return under_user_values(self.choices, config)

    def value(self, key: str) -> Any:
        for choice in self.choices:
            if choice.key == key:
                return choice.value
        raise KeyError(key)

    def table(self) -> str:
        """The plan as a short text table: key, value, reason."""
        width = max(len(c.key) for c in self.choices)
        values = [yaml.safe_dump(c.value, default_flow_style=True).strip().removesuffix("...").strip()
                  for c in self.choices]
        value_width = max(len(v) for v in values)
        target = f"{self.budget_minutes:g} min" if self.budget_minutes is not None else "a step count"
        lines = [f"plan for {self.data} ({target} on {self.device})"]
        lines += [f"  {c.key:<{width}}  {v:<{value_width}}  {c.reason}" for c, v in zip(self.choices, values)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), yaml.safe_dump(self.to_dict(), sort_keys=False, width=120))

    @classmethod
    def load(cls, path: Path) -> "Plan":
        plan = PLAN_FILE.load(path)
        try:
            validate_config(plan.mapping())
        except MedsegError as exc:
            raise MedsegError(path, exc.reason) from None
        return plan


PLAN_FILE = TypedFile(Plan, "plan", PLAN_SCHEMA)


# -- planning ------------------------------------------------------------------------------------------------------

MIN_STRUCTURE_PX = 6.0  # resampling may not make the thinnest structures thinner than this
NATIVE_SCALE = 0.8  # a scale above this trains at native resolution (too little saved to be worth resampling)
RESOLUTION_PX = 256  # resampling keeps the median image's longer side at least this long
PATCH_PX = 256  # the patch a step is sized for (4 per batch), when the objects need no more context
MAX_PATCH = 512
CONTEXT = 2.0  # a patch spans at least this many widths of the large objects (the fingerprint's object_width)
WHOLE_SHARE = 0.75  # a patch this close to the scaled image's size covers all of it
SQUARE_ASPECT = 1.5  # shrunk whole images up to this aspect ratio are each resized to the (square) patch
MIN_STEPS = 1000  # the widest network that still gets this many steps in the budget is chosen
PROBE_SHARE = 0.05  # probes may use at most this share of the budget
BF16_GAIN = 1.2  # bfloat16 autocast is planned where it makes a CPU training step at least this much faster
MIN_TRAIN_SHARE = 0.1  # training keeps at least this share of the budget, however long planning took
VAL_SHARE = 0.1  # validation may use at most this share of the training time
WIDTHS = ((8, 16, 32, 64, 128), (16, 32, 64, 128, 256), (32, 64, 128, 256, 512))
STRIDE = 16  # the U-Net's total downsampling: input sizes are multiples of it
PIXELS_PER_STEP = 4 * 256**2  # small inputs are batched up to this many pixels a step (nnU-Net batches small patches)
MAX_BATCH = 64
CUDA_MEMORY_SHARE = 0.5  # on CUDA a step's batch grows while its memory stays within this share of the free memory
CUDA_MAX_BATCH = 32
STEPS_PER_EPOCH = 250  # an epoch is at least this many steps (nnU-Net's epoch), whatever the dataset size
NETWORK_KEYS = ("model.name", "model.widths", "model.width_scale", "model.options")
UPRIGHT_CONTRAST = 0.5  # top-vs-bottom intensity difference (image std units) that marks an up/down orientation
LAYOUT_ORDER = 0.8  # classes whose centroid offsets keep one sign this consistently on an axis are never flipped


@dataclass(frozen=True)
class PlanInputs:
    """What the planner looks at besides the fingerprint."""

    data: str
    classes: tuple[str, ...]  # class names by id, background first
    classes_source: str  # where they came from (dataset.json, the mask values)
    n_train: int
    n_val: int
    test_fraction: float  # the share of cases held out for testing (0: the dataset's own test split, if any)
    budget_minutes: float | None  # None: plan for the config's step count
    device: str
    fixed: frozenset[str]  # config keys the user set: the plan keeps out of their way
    base: Config  # the user's config: the values of the fixed keys (the probes time the run that will train)
    examples: tuple[Item, ...] = ()  # a few training items: the data loading of a step is timed on them
    kept: tuple[PlanChoice, ...] = ()  # choices made before planning (a --init run's network and geometry): their
    # keys are fixed, and the plan records them first

    @property
    def n_classes(self) -> int:
        return len(self.classes)


class _Choices:
    """Collects plan choices in order; skips keys the user fixed."""

    def __init__(self, fixed: frozenset[str]) -> None:
        self.fixed = fixed
        self.items: list[PlanChoice] = []

    def add(self, key: str, value: Any, reason: str) -> None:
        if key not in self.fixed:
            self.items.append(PlanChoice(key, value, reason))

    def config(self, base: Config) -> Config:
        """The choices so far under the user's values."""
        return under_user_values(self.items, base)


@dataclass(frozen=True)
class Geometry:
    """What the network sees: 2D images resampled by ``scale``, then ``patch`` x ``patch`` crops (tiles at
    inference); ``whole`` when the patch covers the (median) scaled image, and ``resize`` when each image is then
    resized to the patch itself (its own scale, so that none is cropped)."""

    scale: float
    patch: int
    whole: bool
    reason: str
    resize: bool = False


def input_geometry(fingerprint: Fingerprint) -> Geometry:
    """Scale and patch chosen together, as nnU-Net chooses a target spacing and a patch size: the scale shrinks
    the images as far as the thinnest structure (per class, and the background between them) keeps
    :data:`MIN_STRUCTURE_PX` and the median image's longer side keeps :data:`RESOLUTION_PX`; the patch then spans
    :data:`CONTEXT` widths of the large objects, at least :data:`PATCH_PX`, and covers the whole scaled image when
    it nearly does. Shrunk images that a patch covers and that are nearly square (:data:`SQUARE_ASPECT`) are each
    resized to the patch: none is cropped (on BUSI this beat one scale for all, 0.735 vs 0.694 pooled Dice over
    two seeds). Volumes' slices keep their native grid here (their spacing is planned apart)."""
    thinnest, which = _thinnest(fingerprint)
    height, width = fingerprint.height[1], fingerprint.width[1]
    scale = max(MIN_STRUCTURE_PX / thinnest, RESOLUTION_PX / max(height, width))
    unmeasured = not fingerprint.n_dense  # partial labels only: how thin the structures are is unknown
    scale = 1.0 if scale >= NATIVE_SCALE or fingerprint.volumes is not None or unmeasured else round(scale, 3)
    objects = fingerprint.object_width or fingerprint.foreground_width
    need = CONTEXT * objects * scale
    whole = _round_up(max(height, width) * scale, STRIDE)
    largest = _round_up(max(fingerprint.height[2], fingerprint.width[2]) * scale, STRIDE)
    whole = largest if largest <= PATCH_PX else whole  # small images: every one whole, none cropped
    patch = min(MAX_PATCH, max(PATCH_PX, _round_up(need, 32)))
    covers = patch >= WHOLE_SHARE * whole and whole <= MAX_PATCH
    patch = whole if covers else patch
    resize = covers and scale < 1.0 and max(height, width) / min(height, width) <= SQUARE_ASPECT
    at = ("native resolution (no dense mask to measure how thin the structures are)" if unmeasured else
          f"native resolution ({which} {thinnest:g} px wide)" if scale == 1.0 else
          f"scale {scale:g} ({width}x{height} -> {round(width * scale)}x{round(height * scale)}; {which} "
          f"{thinnest:g} px wide keeps {thinnest * scale:.0f} px)")
    if fingerprint.n_partial and not unmeasured:
        at += f" (objects measured on the {fingerprint.n_dense} dense masks, not the {fingerprint.n_partial} partial)"
    context = f"objects up to ~{objects:.0f} px wide ({objects * scale:.0f} px scaled) need ~{need:.0f} px of context"
    inputs = (f"each (nearly square) image resized whole to {patch}x{patch}" if resize else
              f"whole images in one {patch}-px patch" if covers else
              f"{patch}-px patches of the {round(width * scale)}x{round(height * scale)} image")
    return Geometry(scale, patch, covers, f"{at}; {context}: {inputs}", resize)


def _thinnest(fingerprint: Fingerprint) -> tuple[float, str]:
    """The width (px) of the thinnest structures the scale must keep, and what they are: each foreground class's
    median width, and the background's between them (EM membranes are background)."""
    names = ([f"class {k} median" for k in range(1, len(fingerprint.class_widths) + 1)]
             if len(fingerprint.class_widths) > 1 else ["foreground median"])
    widths = list(fingerprint.class_widths) or [fingerprint.foreground_width]
    candidates = [(w, n) for w, n in zip(widths, names) if w > 0]
    if fingerprint.background_width > 0:
        candidates.append((fingerprint.background_width, "background median"))
    return min(candidates) if candidates else (float("inf"), "no structure")


def _round_up(value: float, multiple: int) -> int:
    return max(multiple, -(-int(value) // multiple) * multiple)


PROBE_WARMUP, PROBE_STEPS = 4, 8  # the first steps of a new network are slow on CPU (allocator, oneDNN primitives)


def probe_step(model: str, options: dict[str, Any], size: int, batch_size: int, channels: int, n_classes: int,
               device: str, steps: int = PROBE_STEPS, precision: str = "float32") -> float:
    """Seconds of a training step of zoo ``model`` with ``options`` (forward, loss, backward, Adam) on random data:
    the lower quartile of :data:`PROBE_STEPS` timed steps after :data:`PROBE_WARMUP` untimed ones (interference
    from the rest of the machine only ever slows a step; a run's thousands of steps average it out, a probe's few
    do not), laid out and in the ``precision`` (float32, or the forward pass in bfloat16 or float16 autocast) that
    training uses."""
    import statistics
    import time

    step = _probe_network(model, options, size, batch_size, channels, n_classes, device, precision)
    timings = []
    for index in range(PROBE_WARMUP + steps):
        _synchronize(device)
        started = time.perf_counter()
        step()
        _synchronize(device)
        if index >= PROBE_WARMUP:
            timings.append(time.perf_counter() - started)
    return statistics.quantiles(timings, n=4)[0]


def probe_memory(model: str, options: dict[str, Any], size: int, batch_size: int, channels: int, n_classes: int,
                 device: str, precision: str = "float32") -> int:
    """Peak CUDA memory (bytes) of one training step of zoo ``model``, as :func:`probe_step` runs it."""
    import torch

    torch.cuda.reset_peak_memory_stats(device)
    _probe_network(model, options, size, batch_size, channels, n_classes, device, precision)()
    _synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def _probe_network(model: str, options: dict[str, Any], size: int, batch_size: int, channels: int, n_classes: int,
                   device: str, precision: str) -> Callable[[], None]:
    """A callable that runs one training step of a fresh network on random data, as training runs it."""
    import torch

    from medseg.losses import build_loss
    from medseg.models import create_model

    out_channels = 1 if n_classes == 2 else n_classes
    torch.manual_seed(0)
    layout = training_memory_format(device)
    network = create_model(model, channels, out_channels, **options).to(device, memory_format=layout)
    loss_fn = build_loss("auto", out_channels)
    optimizer = torch.optim.Adam(network.parameters())
    dtype = None if precision == "float32" else getattr(torch, precision)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    x = torch.randn(batch_size, channels, size, size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, n_classes, (batch_size, size, size), device=device)

    def step() -> None:
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            output = network(x)
        loss = loss_fn(output, y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def choose_network(size: int, batch_size: int, channels: int, inputs: PlanInputs, train_seconds: float,
                   loading: float = 0.0, precision: str = "float32",
                   earlier: Sequence[Probe] = ()) -> tuple[tuple[int, ...], list[Probe], str]:
    """The widest U-Net that still gets :data:`MIN_STEPS` steps in ``train_seconds``, by timed probes (narrowest
    first; probing stops at the first network that is too slow, or when the probe budget is spent); a step costs
    the probe's compute (the faster of this probe and an ``earlier`` one of the same step) plus ``loading`` seconds
    of data loading."""
    import time

    started = time.perf_counter()
    probes: list[Probe] = []
    chosen = WIDTHS[0]
    for widths in WIDTHS:
        if probes and time.perf_counter() - started > PROBE_SHARE * train_seconds / 2:
            break
        seconds = probe_step("unet", {"widths": widths}, size, batch_size, channels, inputs.n_classes,
                             inputs.device, precision=precision)
        probes.append(Probe(_label(widths), size, batch_size, round(seconds, 4)))
        if train_seconds / (_step_seconds(widths, precision, [*earlier, *probes]) + loading) < MIN_STEPS \
                and widths != WIDTHS[0]:
            break
        chosen = widths
    step = _step_seconds(chosen, precision, [*earlier, *probes]) + loading
    steps = int(train_seconds / step)
    measured = f"{step:.2f} s/step measured ({loading:.2f} s of it data loading)"
    reason = (f"widest U-Net with >= {MIN_STEPS} steps in the budget: {measured}, ~{steps} steps"
              if steps >= MIN_STEPS else f"narrowest U-Net: {measured}, only ~{steps} steps fit")
    return chosen, probes, reason


def _label(widths: tuple[int, ...]) -> str:
    return f"unet {widths[0]}..{widths[-1]}"


def _step_seconds(widths: tuple[int, ...], precision: str, probes: Sequence[Probe]) -> float:
    """The fastest probe of U-Net ``widths`` in ``precision``: interference from the rest of the machine only ever
    slows a timed step, so of two probes of one step the faster is the nearer to the run's steady pace."""
    labels = {_label(widths), f"{_label(widths)} ({precision})"}
    return min(p.seconds_per_step for p in probes if p.label in labels)


def make_plan(fingerprint: Fingerprint, inputs: PlanInputs, spent_seconds: float = 0.0) -> Plan:
    """The recipe for this dataset, budget (or step count) and machine, each choice with its reason. Keys the user
    set keep the user's values, and the probes time them. ``spent_seconds`` of planning already done (the
    fingerprint) count against the budget, as the probes do. A patch wider than :data:`PATCH_PX` that leaves the
    narrowest network fewer than :data:`MIN_STEPS` steps in the budget gives way to a :data:`PATCH_PX` one."""
    import time

    started = time.perf_counter()
    if inputs.device.startswith("cuda"):
        configure_backends(inputs.base.train.deterministic)  # the probes time cuDNN as the run will use it
    geometry = _geometry(fingerprint, inputs)
    plan = _plan(geometry, fingerprint, inputs, spent_seconds, started)
    steps = _steps_in_budget(plan, inputs)
    if steps < MIN_STEPS and geometry.patch > PATCH_PX and not inputs.fixed & {"data.patch_size", *NETWORK_KEYS}:
        smaller = replace(geometry, patch=PATCH_PX, whole=geometry.resize, reason=(
            f"{geometry.reason}, but the budget allows only ~{steps} steps of those: {PATCH_PX}-px patches"))
        retry = _plan(smaller, fingerprint, inputs, spent_seconds, started)
        plan = replace(retry, probes=plan.probes + retry.probes)
    return plan


def _steps_in_budget(plan: Plan, inputs: PlanInputs) -> float:
    """Training steps the plan's network gets in the budget (infinite without one)."""
    if not inputs.budget_minutes or not plan.seconds_per_step:
        return float("inf")
    return int(inputs.budget_minutes * 60 * (1 - VAL_SHARE) / plan.seconds_per_step)


def _plan(geometry: Geometry, fingerprint: Fingerprint, inputs: PlanInputs, spent_seconds: float,
          started: float) -> Plan:
    """The plan for one input geometry; ``started`` is when planning began (its time counts against the budget)."""
    import time

    choices = _Choices(inputs.fixed)
    _add_geometry(choices, geometry, inputs)
    size = geometry.patch
    batch_size = _add_batch(choices, fingerprint, inputs, size)
    _add_augmentation(choices, fingerprint, shrunk_whole=geometry.resize or (geometry.whole and geometry.scale < 1.0))
    loading = _data_seconds(choices, fingerprint, inputs, batch_size)
    precision, precision_probes = _add_precision(choices, fingerprint, inputs, size, batch_size)
    step, probes = _add_network(choices, fingerprint, inputs, size, batch_size, loading, precision, precision_probes)
    _add_optimisation(choices, inputs)
    run_seconds = inputs.budget_minutes * 60 if inputs.budget_minutes else _steps(inputs, batch_size) * step
    _add_validation(choices, fingerprint, inputs, geometry, step / batch_size / size**2, run_seconds)
    loss = "bce_dice" if inputs.n_classes == 2 else "ce_dice"
    choices.add("loss.name", loss, f"cross-entropy + soft Dice ({100 * fingerprint.foreground_fraction:.0f}% "
                                   "foreground: Dice keeps the foreground from being ignored)")
    _add_data(choices, fingerprint, inputs)
    _add_normalization(choices, fingerprint, inputs)
    if inputs.budget_minutes:
        _add_training_time(choices, inputs.budget_minutes, spent_seconds + time.perf_counter() - started)
    else:
        _add_step_count(choices, inputs, batch_size, step)
    return Plan(PLAN_SCHEMA, inputs.data, inputs.budget_minutes, inputs.device, inputs.kept + tuple(choices.items),
                tuple(probes), round(step, 4))


def _data_seconds(choices: _Choices, fingerprint: Fingerprint, inputs: PlanInputs, batch_size: int) -> float:
    """Seconds of data loading a training step adds to its compute: a batch prepared in the training process
    (``data.workers`` 0), or the part of it the workers cannot hide behind the compute."""
    if not inputs.examples:
        return 0.0
    config = choices.config(inputs.base)
    seconds = batch_seconds(list(inputs.examples), config.data, config.augment, fingerprint.channels,
                            inputs.n_classes, batch_size)
    return seconds / config.data.workers if config.data.workers else seconds


def _geometry(fingerprint: Fingerprint, inputs: PlanInputs) -> Geometry:
    """Scale and patch from the fingerprint, under the user's resize, scale or patch size."""
    data = inputs.base.data
    if "data.resize" in inputs.fixed and data.resize:
        return Geometry(1.0, data.resize, True, "the config's resize", resize=True)
    geometry = input_geometry(fingerprint)
    if "data.scale" in inputs.fixed:
        geometry = replace(geometry, scale=data.scale or 1.0, resize=False)
    if "data.patch_size" in inputs.fixed and data.patch_size:
        geometry = replace(geometry, patch=data.patch_size, whole=False, resize=False)
    return geometry


def _add_geometry(choices: _Choices, geometry: Geometry, inputs: PlanInputs) -> None:
    if "data.resize" in inputs.fixed and inputs.base.data.resize:
        return  # the user's whole-image resize stands in for scale and patch
    if geometry.resize:
        choices.add("data.resize", geometry.patch, geometry.reason)
        choices.add("data.scale", None, "each image resized whole, to its own scale")
        choices.add("data.patch_size", None, "whole images, not patches")
        return
    choices.add("data.scale", None if geometry.scale == 1.0 else geometry.scale, geometry.reason)
    choices.add("data.patch_size", geometry.patch, "whole images (padded to the patch)" if geometry.whole
                else "random crops in training, overlapping tiles at inference")
    choices.add("data.resize", None, "resampled by a scale that keeps the aspect ratio, not resized to a square")


def _add_batch(choices: _Choices, fingerprint: Fingerprint, inputs: PlanInputs, size: int) -> int:
    """4 inputs of 256x256 a step (more, smaller ones below 256 px); on CUDA as many more as the memory holds."""
    if "train.batch_size" in inputs.fixed:
        return inputs.base.train.batch_size
    batch_size = 8 if size == 128 else 4 if size <= 256 else max(2, PIXELS_PER_STEP // size**2)
    if size < 128:
        batch_size = min(MAX_BATCH, PIXELS_PER_STEP // size**2)
    reason = f"{batch_size} x {size}x{size} inputs per step"
    if inputs.device.startswith("cuda"):
        batch_size, reason = _cuda_batch(fingerprint, inputs, size, batch_size)
    choices.add("train.batch_size", batch_size, reason)
    return batch_size


def _cuda_batch(fingerprint: Fingerprint, inputs: PlanInputs, size: int, batch_size: int) -> tuple[int, str]:
    """The batch the GPU's free memory holds, by a probe of the widest network the plan may choose."""
    import torch

    name, options = _network_to_time(inputs, WIDTHS[-1])
    train = inputs.base.train
    precision = _precision_name(autocast_dtype(inputs.device, train.amp, train.cpu_bf16))
    peak = probe_memory(name, options, size, batch_size, fingerprint.channels, inputs.n_classes, inputs.device,
                        precision)
    free = torch.cuda.mem_get_info(inputs.device)[0]
    grown = batch_from_memory(batch_size, peak, free)
    return grown, (f"{grown} x {size}x{size} inputs per step: a step of {batch_size} peaked at {peak / 2**30:.2f} "
                   f"GiB of the {free / 2**30:.1f} GiB free (batches grow to {CUDA_MEMORY_SHARE:.0%} of it, "
                   f"at most {CUDA_MAX_BATCH})")


def batch_from_memory(batch_size: int, peak_bytes: int, free_bytes: int) -> int:
    """``batch_size`` doubled while a step, whose memory grows with the batch from ``peak_bytes`` at
    ``batch_size``, stays within :data:`CUDA_MEMORY_SHARE` of ``free_bytes`` (at most :data:`CUDA_MAX_BATCH`)."""
    per_input = peak_bytes / batch_size
    grown = batch_size
    while grown * 2 <= CUDA_MAX_BATCH and grown * 2 * per_input <= CUDA_MEMORY_SHARE * free_bytes:
        grown *= 2
    return grown


def _add_network(choices: _Choices, fingerprint: Fingerprint, inputs: PlanInputs, size: int, batch_size: int,
                 loading: float, precision: str, timed: list[Probe]) -> tuple[float, list[Probe]]:
    """The network (the user's, timed; else the widest U-Net the budget allows; without a budget the middle
    width) and the seconds a step of the run should take: the probe's compute plus ``loading``. ``timed``: the
    precision probes (float32, bfloat16) so far, of the user's network where it is fixed; all probes are returned."""
    model = inputs.base.model
    if inputs.fixed & set(NETWORK_KEYS):
        seconds = (timed[int(precision == "bfloat16")].seconds_per_step if timed else
                   probe_step(model.name, model.zoo_options(), size, batch_size, fingerprint.channels,
                              inputs.n_classes, inputs.device, precision=precision))
        return seconds + loading, timed or [Probe(f"{model.name} (the config's)", size, batch_size,
                                                  round(seconds, 4))]
    if inputs.budget_minutes:
        widths, probes, reason = choose_network(size, batch_size, fingerprint.channels, inputs,
                                                inputs.budget_minutes * 60 * (1 - VAL_SHARE), loading, precision,
                                                timed)
    else:
        widths = WIDTHS[1]
        seconds = probe_step("unet", {"widths": widths}, size, batch_size, fingerprint.channels, inputs.n_classes,
                             inputs.device, precision=precision)
        probes = [Probe(_label(widths), size, batch_size, round(seconds, 4))]
        reason = (f"no budget: the middle U-Net of the plan's three "
                  f"({_step_seconds(widths, precision, [*timed, *probes]):.2f} s/step measured); give --budget to fit "
                  "the width to a deadline")
    choices.add("model.name", "unet", "U-Net: the fastest zoo network per step on CPU (benchmarks/run.py)")
    choices.add("model.widths", list(widths), reason)
    return _step_seconds(widths, precision, [*timed, *probes]) + loading, timed + probes


def _add_precision(choices: _Choices, fingerprint: Fingerprint, inputs: PlanInputs, size: int,
                   batch_size: int) -> tuple[str, list[Probe]]:
    """The precision a step trains in: float16 autocast on CUDA (``train.amp``); on a CPU, bfloat16 autocast where
    a probe measured it :data:`BF16_GAIN` faster (CPUs with bfloat16 units, AVX512-BF16 or AMX, run it ~2x
    faster; others emulate it, slower than float32). A deterministic run keeps float32, so that two runs of one
    command plan alike."""
    train = inputs.base.train
    if inputs.device != "cpu" or "train.cpu_bf16" in inputs.fixed:
        return _precision_name(autocast_dtype(inputs.device, train.amp, train.cpu_bf16)), []
    if train.deterministic:
        choices.add("train.cpu_bf16", False, "a deterministic run keeps float32: a choice by timing could differ "
                                             "between two runs of the same command")
        return "float32", []
    name, options = _network_to_time(inputs, WIDTHS[1])
    timed = [probe_step(name, options, size, batch_size, fingerprint.channels, inputs.n_classes, inputs.device,
                        precision=precision) for precision in ("float32", "bfloat16")]
    gain = timed[0] / timed[1]
    label = _label(options["widths"]) if name == "unet" and "widths" in options else f"{name} (the config's)"
    choices.add("train.cpu_bf16", gain >= BF16_GAIN,
                f"bfloat16 autocast {'makes' if gain >= BF16_GAIN else 'would make'} a step of {label} {gain:.2f}x "
                f"as fast on this CPU ({timed[0]:.2f} -> {timed[1]:.2f} s); the loss stays in float32")
    probes = [Probe(f"{label} ({precision})", size, batch_size, round(seconds, 4))
              for precision, seconds in zip(("float32", "bfloat16"), timed)]
    return "bfloat16" if gain >= BF16_GAIN else "float32", probes


def _network_to_time(inputs: PlanInputs, widths: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
    """The user's network where the config fixes it, else the U-Net of ``widths``: zoo name and options."""
    model = inputs.base.model
    if inputs.fixed & set(NETWORK_KEYS):
        return model.name, model.zoo_options()
    return "unet", {"widths": widths}


def _precision_name(dtype: Any) -> str:
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def _steps(inputs: PlanInputs, batch_size: int) -> int:
    """The config's step count: ``train.iterations``, else its epochs of at least :data:`STEPS_PER_EPOCH` steps."""
    train = inputs.base.train
    per_epoch = train.steps_per_epoch or max(STEPS_PER_EPOCH, -(-inputs.n_train // batch_size))
    return train.iterations or train.epochs * per_epoch


def _add_step_count(choices: _Choices, inputs: PlanInputs, batch_size: int, step: float) -> None:
    if inputs.fixed & {"train.iterations", "train.epochs", "train.steps_per_epoch"}:
        return
    steps = _steps(inputs, batch_size)
    choices.add("train.iterations", steps,
                f"no budget: the config's {inputs.base.train.epochs} epochs of >= {STEPS_PER_EPOCH} steps "
                f"(nnU-Net's epoch; fewer epochs than its 1000, for a CPU), ~{steps * step / 60:.0f} min at the "
                "measured step time")


def _add_data(choices: _Choices, fingerprint: Fingerprint, inputs: PlanInputs) -> None:
    """Classes, how volumes are sliced, and the held-out test split."""
    names = ", ".join(inputs.classes)
    choices.add("data.n_classes", inputs.n_classes, f"{inputs.n_classes} classes ({inputs.classes_source}): {names}")
    choices.add("data.class_names", list(inputs.classes), f"class names ({inputs.classes_source})")
    volumes = fingerprint.volumes
    if volumes is not None:
        spacing = " x ".join(f"{v:g}" for v in volumes.spacing)
        choices.add("data.slice_axis", volumes.slice_axis,
                    f"{volumes.n_cases} volumes (median {'x'.join(map(str, volumes.shape))} voxels, {spacing} mm, "
                    f"anisotropy {volumes.anisotropy:g}): 2D slices along voxel axis {volumes.slice_axis}, the "
                    "coarsest (nnU-Net's 2D configuration); scored per case in 3D")
        in_plane = [volumes.spacing[axis] for axis in range(3) if axis != volumes.slice_axis]
        choices.add("data.spacing", in_plane,
                    f"slices resampled to the median in-plane spacing {in_plane[0]:g} x {in_plane[1]:g} mm (as "
                    "nnU-Net; images cubic, labels nearest), predictions resampled back to each case's own grid")
    if inputs.test_fraction:
        choices.add("data.test_fraction", inputs.test_fraction,
                    f"no labelled test split in the dataset: {100 * inputs.test_fraction:.0f}% of the cases are held "
                    "out (seeded) for an honest test score at the end")


ZERO_BACKGROUND = 0.1  # a channel with this share of voxels exactly 0 has a masked background (skull-stripped MR)


def _add_normalization(choices: _Choices, fingerprint: Fingerprint, inputs: PlanInputs) -> None:
    """The intensity scheme of each channel of scanner data (volumes, DICOM or NIfTI slices), by its modality:
    CT's Hounsfield units by nnU-Net's CT scheme (clipped to the foreground's percentiles, z-scored with the
    dataset's foreground statistics), a masked background by z-scoring over the nonzero voxels, anything else by
    z-scoring per case. Other 2D images keep the z-score of each image."""
    if fingerprint.volumes is None and not any(item.slice is not None for item in inputs.examples):
        return
    schemes, intensity, reasons = [], [], []
    for channel in range(fingerprint.channels):
        modality = fingerprint.modalities[channel] if channel < len(fingerprint.modalities) else ""
        named = f"channel {channel} ({modality or 'modality not given'})"
        zeros = fingerprint.zero_share[channel] if channel < len(fingerprint.zero_share) else 0.0
        if modality.strip().upper().startswith("CT") and channel < len(fingerprint.foreground_intensity):
            low, high, mean, std = fingerprint.foreground_intensity[channel]
            schemes.append("ct")
            intensity.append([low, high, mean, std])
            reasons.append(f"{named}: HU clipped to the foreground's 0.5-99.5 percentiles [{low:g}, {high:g}] and "
                           f"z-scored with its mean {mean:.1f} and std {std:.1f} over the dataset (nnU-Net's CT "
                           "scheme)")
        elif zeros >= ZERO_BACKGROUND:
            schemes.append("nonzero")
            intensity.append(None)
            reasons.append(f"{named}: {100 * zeros:.0f}% of the voxels are exactly 0 (a masked background): "
                           "z-scored per case over the nonzero voxels, the background kept at 0")
        else:
            schemes.append("zscore")
            intensity.append(None)
            reasons.append(f"{named}: z-scored per case (all its voxels)")
    choices.add("data.normalize", schemes[0] if len(set(schemes)) == 1 else schemes, "; ".join(reasons))
    if any(values is not None for values in intensity):
        choices.add("data.intensity", intensity, "the CT channels' statistics over the dataset's foreground")


def _add_training_time(choices: _Choices, budget_minutes: float, planning: float) -> None:
    """The budget less the planning time, but never less than :data:`MIN_TRAIN_SHARE` of it (a tiny budget on a
    busy machine overruns a little rather than failing)."""
    budget = budget_minutes * 60
    if budget - planning >= MIN_TRAIN_SHARE * budget:
        seconds, reason = budget - planning, f"{budget_minutes:g} min budget less {planning:.0f} s of planning"
    else:
        seconds = MIN_TRAIN_SHARE * budget
        reason = (f"planning took {planning:.0f} s of the {budget_minutes:g} min budget; training gets "
                  f"{100 * MIN_TRAIN_SHARE:.0f}% of it anyway")
    choices.add("train.budget_minutes", round(seconds / 60, 3),
                f"{reason}; the learning rate follows elapsed time and reaches ~0 at the deadline")


def _add_optimisation(choices: _Choices, inputs: PlanInputs) -> None:
    choices.add("optim.name", "adam", "Adam: robust without tuning for short schedules")
    choices.add("optim.lr", 1e-3, "Adam's usual rate for U-Nets trained from scratch")
    choices.add("optim.schedule", "cosine", "cosine decay over the budget, so the run ends annealed")
    choices.add("optim.warmup_steps", 20, "a short linear warm-up steadies the first Adam steps")
    choices.add("train.select", "final", "the annealed final weights (a best-of-N pick on a few validation "
                                         "images is noisy and biased)")


def _add_validation(choices: _Choices, fingerprint: Fingerprint, inputs: PlanInputs, geometry: Geometry,
                    seconds_per_pixel: float, run_seconds: float) -> None:
    """Validation paced to at most :data:`VAL_SHARE` of the time, on a subset when one pass would cost more than
    a fortieth of the run's ``run_seconds``."""
    choices.add("train.val_time_share", VAL_SHARE, f"validation costs at most {100 * VAL_SHARE:.0f}% of the time")
    # A forward pass costs ~1/3 of a training step per pixel; tiles overlapping by half see each pixel ~4 times.
    scaled = fingerprint.height[1] * fingerprint.width[1] * geometry.scale**2
    pixels = geometry.patch**2 if geometry.whole else 4 * scaled
    per_image = pixels * seconds_per_pixel / 3
    limit = run_seconds / 40
    if inputs.n_val * per_image > limit:
        images = max(2, int(limit / per_image))
        choices.add("train.val_images", images, f"one validation pass over all {inputs.n_val} images would take "
                                                f"~{inputs.n_val * per_image:.0f} s: a fixed subset of {images}")
    if not fingerprint.n_dense:
        choices.add("inference.postprocess", "none", "partial labels only: an unlabelled pixel may hold any "
                                                     "object, so no threshold or post-processing can be judged")
        return
    dense = " on the densely labelled validation images" if fingerprint.n_partial else ""
    choices.add("inference.postprocess", "auto", "threshold, largest component, small-object removal and hole "
                                                 f"filling are each kept only if they raise validation Dice{dense}")


def _add_augmentation(choices: _Choices, fingerprint: Fingerprint, shrunk_whole: bool) -> None:
    """Flips and 90-degree rotations unless they would teach something false: an up/down orientation of the
    images, or classes that sit in a fixed order along an axis (a mirror image would swap them)."""
    upright = (abs(fingerprint.updown_contrast) >= UPRIGHT_CONTRAST
               and abs(fingerprint.updown_contrast) >= 3 * abs(fingerprint.leftright_contrast))
    contrast = (f"top/bottom contrast {fingerprint.updown_contrast:+.2f} std vs left/right "
                f"{fingerprint.leftright_contrast:+.2f}")
    rows, columns = (abs(value) >= LAYOUT_ORDER for value in fingerprint.class_layout)
    layout = (f"classes sit in a fixed order (centroid offsets {fingerprint.class_layout[0]:+.2f} along rows, "
              f"{fingerprint.class_layout[1]:+.2f} along columns)")
    if columns:
        choices.add("augment.flip", False, f"{layout}: no horizontal flips, which would swap them")
    if upright:
        choices.add("augment.vflip", False, f"images have an up/down orientation ({contrast}): horizontal flips only")
    elif rows:
        choices.add("augment.vflip", False, f"{layout}: no vertical flips, which would swap them")
    else:
        choices.add("augment.vflip", True, f"no up/down orientation ({contrast}): vertical flips too")
    if upright or rows or columns:
        choices.add("augment.rotate90", False, "no 90-degree rotations: the images have an orientation")
    else:
        choices.add("augment.rotate90", True, "rotation-invariant content")
    elastic = 0.1 if shrunk_whole else 0.3
    choices.add("augment.elastic_p", elastic, "light elastic deformation for whole, shrunk images" if shrunk_whole
                else "elastic deformation (U-Net paper) for deformable structures at native resolution")
    vertical, horizontal = not (upright or rows), not columns
    choices.add("inference.tta", vertical or horizontal,
                "flip test-time augmentation (the flips training used): 4x (or 2x) prediction time for a steadier "
                "mask" if vertical or horizontal else "no flips in training, so none at test time")
    choices.add("inference.tta_vflip", vertical, "vertical flips only where training used them")
    if not horizontal:
        choices.add("inference.tta_hflip", False, "horizontal flips only where training used them")


# -- from a dataset to a plan --------------------------------------------------------------------------------------

HELD_OUT = 0.2  # the share of cases a plan holds out for testing when the dataset has no labelled test split
EXAMPLES = 8  # training items the data loading of a step is timed on


@dataclass(frozen=True)
class PlannedData:
    """What planning saw of the dataset: its fingerprint and the split sizes of the config's (or held-out) split."""

    fingerprint: Fingerprint
    n_train: int
    n_val: int
    test_fraction: float  # data.test_fraction the plan sets (the config's, or HELD_OUT)
    examples: tuple[Item, ...]  # a few training items, spread over the split


def fingerprint_dataset(config: Config, items: list[Item], hold_out: bool = True) -> PlannedData:
    """The fingerprint of the dataset's labelled non-test ``items`` (at most a spread-out sample of them) and the
    split sizes. With ``hold_out``, a dataset without a labelled test split has :data:`HELD_OUT` of its cases held
    out first, as training will."""
    data = config.data
    has_test = any(item.split == "test" for item in items)
    test_fraction = HELD_OUT if hold_out and not has_test and not data.test_fraction else data.test_fraction
    splits = split_items(items, data.val_fraction, test_fraction, data.split_seed, data.fold, data.folds)
    labelled = splits.train + splits.val
    if not labelled:
        raise MedsegError(data.root, "no labelled training images to plan from")
    channels = input_channels(config, splits)
    with Reader() as reader:
        samples = (load_sample(labelled[i], channels, data.n_classes, reader) for i in spread(len(labelled)))
        fingerprint = compute_fingerprint(samples, data.n_classes, volume_facts(labelled),
                                          channel_modalities(data.root, labelled))
    examples = tuple(splits.train[i] for i in spread(len(splits.train), EXAMPLES))
    return PlannedData(fingerprint, len(splits.train), len(splits.val), test_fraction, examples)


def plan_dataset(config: Config, items: list[Item], fixed: frozenset[str], classes_source: str,
                 budget_minutes: float | None, spent_seconds: float = 0.0,
                 kept: Sequence[PlanChoice] = ()) -> tuple[Plan, Fingerprint]:
    """Fingerprint the dataset's ``items`` and plan for the budget (or, without one, for the config's step count),
    leaving the ``fixed`` keys at the config's values and recording the ``kept`` choices made before planning;
    logs the plan as a table."""
    import time

    started = time.perf_counter()
    planned = fingerprint_dataset(config, items, hold_out="data.test_fraction" not in fixed)
    names = tuple(config.data.class_names or default_class_names(config.data.n_classes))
    inputs = PlanInputs(data=str(config.data.root), classes=names, classes_source=classes_source,
                        n_train=planned.n_train, n_val=planned.n_val, test_fraction=planned.test_fraction,
                        budget_minutes=budget_minutes, device=str(select_device(config.train.device)), fixed=fixed,
                        base=config, examples=planned.examples, kept=tuple(kept))
    plan = make_plan(planned.fingerprint, inputs, spent_seconds=spent_seconds + time.perf_counter() - started)
    get_logger().info("%s", plan.table())
    return plan, planned.fingerprint
