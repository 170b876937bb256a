"""Labelling with medseg, measured with annotators simulated from the shared sets' dense masks.

    python benchmarks/labelling.py --work /tmp/medseg-labelling --out labelling.json --markdown docs/labelling.md

On each dataset's train/test split (``accuracy.py``'s: the test images are never labelled, trained on or chosen),
for each seed:
- **scribbles**: every training image labelled by strokes along its objects' skeletons and through its background,
  covering at most ``--scribble`` of its pixels (the rest unlabelled: 128 in the folder format), trained from
  scratch for ``--budget-scribble`` minutes; against every training image's full mask, the same budget;
- **the loop**: 10% of the training images (at least 2) fully labelled at random and trained from scratch for
  ``--budget-first`` minutes; then 4 rounds, each labelling 5% more (at least 1) chosen by `medseg suggest` with the
  last round's run, or at random, and fine-tuning with `medseg train --init <last run>` for ``--budget-round``
  minutes; the test Dice after every round. The suggest and random orders share the first round;
- **the whole pool**: every training image's full mask, from scratch for the loop's total budget;
- **fine-tuning**: the last round's labelled images from scratch for 3 x ``--budget-round``, against the last
  round's fine-tune.

Every run is `medseg train` / `medseg suggest` with defaults (and ``--seed``), as a user runs them, in a
subprocess; the test Dice is the run's own test evaluation (pooled Dice on the 2D sets, the mean per case in 3D on
the MSD set, as ``accuracy.py`` reports them). ``--through-api`` drives the same steps through the labelling page's
HTTP API (`medseg label`) instead. Every run is cached under ``--work/cells`` as it finishes, so an interrupted
benchmark resumes; the figures are only comparable within one machine and thread count (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import DATASETS, SHARED, Dataset  # noqa: E402
from annotators import Annotation, Source, dense, make_folder, scribble, write_annotation  # noqa: E402

FIRST_SHARE, ROUND_SHARE, ROUNDS = 0.10, 0.05, 4
ORDERS = ("suggest", "random")


# -- the tool the simulated annotator drives: medseg's commands, or the labelling page's HTTP API ----------------------

class Tool(Protocol):
    """What the annotator does with medseg: hand over labels, train (or fine-tune) on the folder, and ask what to
    label next. ``arm`` names the labelling effort a folder belongs to (its own data folder and runs)."""

    def label(self, source: Source, folder: Path, item: str, annotation: Annotation) -> None: ...

    def train(self, folder: Path, run: Path, minutes: float, seed: int, init: Path | None) -> Path: ...

    def suggest(self, run: Path, folder: Path, count: int) -> list[str]: ...

    def timings(self) -> dict[str, Any]:
        """What the tool measured of itself since the last call (seconds), for the cell."""

    def close(self) -> None: ...


class Commands:
    """Mask files written into the folder, and `medseg train` and `medseg suggest` as a user runs them."""

    def label(self, source: Source, folder: Path, item: str, annotation: Annotation) -> None:
        write_annotation(source, folder, item, annotation)

    def train(self, folder: Path, run: Path, minutes: float, seed: int, init: Path | None) -> Path:
        if run.exists():
            shutil.rmtree(run)
        medseg("train", "--data", str(folder), "--out", str(run), "--budget", f"{minutes}m", "--seed", str(seed),
               *(["--init", str(init)] if init else []))
        return run

    def suggest(self, run: Path, folder: Path, count: int) -> list[str]:
        import csv

        out = run / "suggestions.csv"
        medseg("suggest", str(run), str(folder), "-n", str(count), "--out", str(out))
        with out.open() as handle:
            return [row["id"] for row in csv.DictReader(handle)]

    def timings(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def medseg(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"medseg {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def test_dice(dataset: Dataset, run: Path) -> dict[str, float]:
    """The run's own test evaluation: pooled and mean Dice, and the figure the benchmark reports."""
    metrics = json.loads((run / "eval" / "summary.json").read_text())["metrics"]["dice"]
    figure = metrics["mean"] if dataset.metric == "dice_mean" else metrics["pooled"]
    return {"dice": figure, "dice_pooled": metrics["pooled"], "dice_mean": metrics["mean"]}


# -- the measurements ---------------------------------------------------------------------------------------------

@dataclass
class Cells:
    """Measurements cached in ``work/cells`` (one JSON each), so that an interrupted benchmark resumes. A cell
    measured by other code (this script, or medseg's source) is measured again; only the ``arms`` named are
    measured (None: all), the others are taken as cached, by whatever code measured them (their ``code`` is in
    the report)."""

    work: Path
    code: str
    arms: frozenset[str] | None = None
    done: list[dict[str, Any]] = field(default_factory=list)

    def get(self, key: str, measure) -> dict[str, Any] | None:
        path = self.work / "cells" / f"{key}.json"
        cached = json.loads(path.read_text()) if path.is_file() else None
        wanted = self.arms is None or key.rsplit("_", 1)[1].rstrip("0123456789.") in self.arms
        if cached is not None and (cached.get("code") == self.code or not wanted):
            self.done.append(cached)
            return cached
        if not wanted:
            return None
        print(f"{time.strftime('%H:%M:%S')} {key}", flush=True)
        started = time.perf_counter()
        result = {**measure(), "key": key, "code": self.code, "wall_seconds": round(time.perf_counter() - started)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(f"    Dice {result['dice']:.4f}", flush=True)
        self.done.append(result)
        return result


@dataclass(frozen=True)
class Budgets:
    first: float
    round: float
    scribble: float

    @property
    def loop(self) -> float:
        return self.first + ROUNDS * self.round


class Annotator(Protocol):
    """An annotator's labels of one image."""

    def __call__(self, source: Source, item: str) -> Annotation: ...


SCRIBBLE_STYLES = ("border", "skeleton")


def scribble_arm(style: str, share: float) -> str:
    """The name of a scribble measurement (the first style measured, ``skeleton``, kept its plain name)."""
    return f"scribble{share:g}" if style == "skeleton" else f"scribble-{style}{share:g}"


def run_dataset(source: Source, seed: int, budgets: Budgets, share: float, styles: Sequence[str], tool: Tool,
                cells: Cells, mode: str) -> None:
    """Every measurement of one dataset and seed."""
    name, pool = source.dataset.name, source.pool
    runs = cells.work / "runs" / mode / name / f"seed{seed}"
    first = max(2, round(FIRST_SHARE * len(pool)))
    step = max(1, round(ROUND_SHARE * len(pool)))
    start = [str(i) for i in np.random.default_rng(seed).choice(pool, first, replace=False)]

    def scribbles(style: str) -> Annotator:
        strokes = np.random.default_rng([seed, 7])
        return lambda source, item: scribble(source, item, share, strokes, style)

    def label(folder: Path, items: Sequence[str], annotator: Annotator) -> list[float]:
        """The labelled shares of the ``items`` not labelled in ``folder`` yet, now labelled."""
        shares = []
        for item in items:
            if not (folder / "masks" / f"{item}{source.suffix()}").exists():
                annotation = annotator(source, item)
                tool.label(source, folder, item, annotation)
                shares.append(annotation.share)
        return shares

    def train(arm: str, labelled: Sequence[str], minutes: float, init: Path | None = None,
              annotator: Annotator = dense) -> dict[str, Any]:
        folder = make_folder(source, runs / arm / "data")
        shares = label(folder, labelled, annotator)
        run = tool.train(folder, runs / arm / f"run{len(labelled)}", minutes, seed, init)
        return {"run": str(run), "labelled_images": len(labelled), "pool": len(pool), "minutes": minutes,
                "labelled_share": float(np.mean(shares)) if shares else 1.0, **test_dice(source.dataset, run),
                **tool.timings()}

    key = f"{mode}_{name}_seed{seed}"
    cells.get(f"{key}_dense", lambda: train("dense", pool, budgets.scribble))
    for style in styles:
        arm = scribble_arm(style, share)
        cells.get(f"{key}_{arm}", lambda: train(arm.removesuffix(f"{share:g}"), pool, budgets.scribble,
                                                annotator=scribbles(style)))
    cells.get(f"{key}_pool", lambda: train("pool", pool, budgets.loop))
    round0 = cells.get(f"{key}_round0", lambda: train("round0", start, budgets.first))
    for order in ORDERS if round0 is not None else ():
        labelled, previous = list(start), Path(round0["run"])
        label(make_folder(source, runs / order / "data"), start, dense)
        choices = np.random.default_rng([seed, 11])
        for k in range(1, ROUNDS + 1):
            def measure(order: str = order, labelled: list[str] = labelled, previous: Path = previous) -> dict:
                rest = [i for i in pool if i not in labelled]
                picks = (tool.suggest(previous, runs / order / "data", step) if order == "suggest"
                         else [str(i) for i in choices.choice(rest, min(step, len(rest)), replace=False)])
                return {"picked": picks, **train(order, labelled + picks, budgets.round, init=previous)}

            result = cells.get(f"{key}_{order}{k}", measure)
            if result is None:
                break
            labelled, previous = labelled + result["picked"], Path(result["run"])
        if order == "suggest" and len(labelled) == first + ROUNDS * step:
            cells.get(f"{key}_scratch", lambda: train("scratch", labelled, 3 * budgets.round))


# -- the report -----------------------------------------------------------------------------------------------------

def summarise(done: list[dict[str, Any]], names: list[str], seeds: list[int], share: float, styles: Sequence[str],
              budgets: Budgets, mode: str) -> tuple[dict[str, Any], str]:
    """The curves' table and the targets, per dataset: means over the seeds that measured every arm the dataset has
    (a seed cut short is left out, so that every figure and ratio is over the same seeds)."""
    by_key = {cell["key"]: cell for cell in done}
    targets, lines = {}, []
    for name in names:
        arms = {s: {key.rsplit("_", 1)[1] for key in by_key if key.startswith(f"{mode}_{name}_seed{s}_")}
                for s in seeds}
        every = set().union(*arms.values())
        kept = [s for s in seeds if arms[s] == every]

        def figures(arm: str) -> list[float]:
            return [by_key[f"{mode}_{name}_seed{s}_{arm}"]["dice"] for s in kept
                    if f"{mode}_{name}_seed{s}_{arm}" in by_key]

        def mean(arm: str) -> float:
            values = figures(arm)
            return float(np.mean(values)) if values else math.nan

        rounds = {order: [mean("round0")] + [mean(f"{order}{k}") for k in range(1, ROUNDS + 1)] for order in ORDERS}
        sample = next((by_key[k] for k in by_key if k.startswith(f"{mode}_{name}_") and "labelled_images" in
                       by_key[k]), None)
        if sample is None:
            continue
        pool = sample["pool"]
        counts = [max(2, round(FIRST_SHARE * pool)) + k * max(1, round(ROUND_SHARE * pool)) for k in range(ROUNDS + 1)]
        scribbles = {}
        for style in styles:
            arm = scribble_arm(style, share)
            shares = [by_key[k]["labelled_share"] for k in by_key
                      if k.startswith(f"{mode}_{name}_seed") and k.endswith(f"_{arm}")]
            scribbles[style] = {"dice": mean(arm), "over_dense": mean(arm) / mean("dense"), "seeds": len(figures(arm)),
                                "labelled_share": float(np.mean(shares)) if shares else math.nan}
        targets[name] = {
            "scribbles": scribbles,
            "suggest_over_pool": rounds["suggest"][-1] / mean("pool"),
            "suggest_minus_random": [s - r for s, r in zip(rounds["suggest"][1:], rounds["random"][1:])],
            "finetune_over_scratch3x": rounds["suggest"][-1] / mean("scratch"),
            "rounds": rounds, "labelled_images": counts, "pool": pool, "dense": mean("dense"),
            "whole_pool": mean("pool"), "scratch3x": mean("scratch"),
            "seeds": max(len(figures(arm)) for arm in ("dense", "pool", "round0")),
        }
        lines += _table(name, targets[name], budgets)
    return targets, "\n".join(lines)


def _table(name: str, t: dict[str, Any], budgets: Budgets) -> list[str]:
    counts, pool = t["labelled_images"], t["pool"]
    rows = [f"### {name} (training pool {pool} images; mean of {t['seeds']} seeds)", "",
            "| labelled images | " + " | ".join(f"{c} ({100 * c / pool:.0f}%)" for c in counts) + " |",
            "|---|" + "---:|" * len(counts)]
    for order in ORDERS:
        rows.append(f"| {order} order | " + " | ".join(f"{d:.4f}" for d in t["rounds"][order]) + " |")
    measured = [
        (f"dense masks, {budgets.scribble:g} min", t["dense"], "", math.nan),
        *((f"scribbles, {style} strokes ({100 * sc['labelled_share']:.1f}% of pixels; {sc['seeds']} seeds), "
           f"{budgets.scribble:g} min", sc["dice"], ">= 90% of dense", sc["over_dense"])
          for style, sc in t["scribbles"].items()),
        (f"whole pool, {budgets.loop:g} min", t["whole_pool"], "", math.nan),
        (f"suggest after {ROUNDS} rounds ({counts[-1]} images, {budgets.loop:g} min in all)",
         t["rounds"]["suggest"][-1], ">= 95% of whole pool", t["suggest_over_pool"]),
        (f"last round from scratch, {3 * budgets.round:g} min", t["scratch3x"],
         f"fine-tune ({budgets.round:g} min) >= it", t["finetune_over_scratch3x"])]
    rows += ["", "| measurement | test Dice | target | |", "|---|---:|---|---|"]
    rows += [f"| {label} | {dice:.4f} | {target} | {'' if math.isnan(ratio) else f'{100 * ratio:.1f}%'} |"
             for label, dice, target, ratio in measured if not math.isnan(dice)]
    rows += ["| suggest minus random, rounds 1-4 | " + ", ".join(f"{d:+.4f}" for d in t["suggest_minus_random"])
             + " | >= 0 every round | |", ""]
    return rows


def timings_table(done: list[dict[str, Any]], budgets: Budgets) -> list[str]:
    """What a person waits for on the page (through the API): from a save to the next image shown, and from
    starting a round to the refreshed predictions and queue order."""
    def values(key: str, arms: Sequence[str] = ()) -> np.ndarray:
        return np.array([v for cell in done if not arms or cell["key"].rsplit("_", 1)[1].rstrip("0123456789.")
                         in arms for v in cell.get(key, [])])

    rows = ["### Waiting on the page", "", "| wait | n | median | 90th percentile | max |", "|---|---:|---:|---:|---:|"]
    for label, key, arms in (("save -> next image shown", "save_to_next_seconds", ()),
                             (f"train ({budgets.first:g} min) -> refreshed predictions", "train_to_refresh_seconds",
                              ("round",)),
                             ("  of which refreshing after training", "refresh_seconds", ("round",)),
                             (f"train ({budgets.round:g} min) -> refreshed predictions", "train_to_refresh_seconds",
                              ORDERS)):
        found = values(key, arms)
        if found.size:
            rows.append(f"| {label} | {found.size} | {np.median(found):.2f} s | {np.percentile(found, 90):.2f} s | "
                        f"{found.max():.2f} s |")
    return rows + [""]


def agreement_table(done: list[dict[str, Any]], direct: list[dict[str, Any]]) -> list[str]:
    """The API's figures beside the direct ones, arm by arm (means over the seeds both measured), with the
    seed-to-seed spread of the direct figures (over every seed direct measured) as the noise to judge the
    difference by."""
    by_key = {cell["key"]: cell for cell in direct}
    spreads: dict[tuple[str, str], list[float]] = {}
    for cell in direct:
        name_seed, arm = cell["key"].removeprefix("direct_").rsplit("_", 1)
        spreads.setdefault((name_seed.rsplit("_seed", 1)[0], arm), []).append(cell["dice"])
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for cell in done:
        twin = by_key.get("direct_" + cell["key"].removeprefix("api_"))
        if twin is not None:
            _, name_seed_arm = cell["key"].split("_", 1)
            name, arm = name_seed_arm.rsplit("_seed", 1)[0], name_seed_arm.rsplit("_", 1)[1]
            groups.setdefault((name, arm), []).append((twin["dice"], cell["dice"]))
    rows = ["### Through the API against direct", "",
            "| set | measurement | seeds | direct | through the API | difference | direct's seed spread (sd) |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for (name, arm), pairs in sorted(groups.items()):
        direct_dice, api_dice = np.array(pairs).T
        seeds = spreads[name, arm]
        spread = f"{np.std(seeds, ddof=1):.4f} ({len(seeds)} seeds)" if len(seeds) > 1 else "-"
        rows.append(f"| {name} | {arm} | {len(pairs)} | {direct_dice.mean():.4f} | {api_dice.mean():.4f} | "
                    f"{api_dice.mean() - direct_dice.mean():+.4f} | {spread} |")
    return rows + [""]


def curves_png(targets: dict[str, Any], path: Path) -> None:
    """Test Dice against labelled images (the loop's orders) and against labelled pixels (scribbles, rounds,
    whole pool), one row per dataset."""
    from medseg.visualize import pyplot

    plt = pyplot()
    figure, axes = plt.subplots(len(targets), 2, figsize=(10, 3.2 * len(targets)), squeeze=False)
    for row, (name, t) in enumerate(targets.items()):
        left, right = axes[row]
        for order in ORDERS:
            left.plot(t["labelled_images"], t["rounds"][order], marker="o", label=f"{order} order")
        left.axhline(t["whole_pool"], color="grey", linestyle="--", label="whole pool")
        left.set(title=f"{name}: Dice against labelled images", xlabel="labelled images", ylabel="test Dice")
        left.legend(fontsize=8)
        pixels = [100 * c / t["pool"] for c in t["labelled_images"]]
        right.plot(pixels, t["rounds"]["suggest"], marker="o", label="full masks (suggest order)")
        for style, sc in t["scribbles"].items():
            right.plot([100 * sc["labelled_share"]], [sc["dice"]], marker="s", linestyle="",
                       label=f"scribbles on every image ({style})")
        right.plot([100], [t["dense"]], marker="^", linestyle="", label="full masks on every image")
        right.set(title=f"{name}: Dice against labelled pixels", xlabel="% of the pool's pixels labelled",
                  ylabel="test Dice", xscale="log")
        right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def code_version() -> str:
    """This script and medseg's source, as a digest: a cached cell measured by other code is measured again."""
    import hashlib

    import medseg

    digest = hashlib.sha256(Path(__file__).read_bytes() + (Path(__file__).parent / "annotators.py").read_bytes())
    for path in sorted(Path(medseg.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="busi,chase_db1,msd_hippocampus,isbi2012_em")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget-first", type=float, default=2.0, help="minutes for the first round")
    parser.add_argument("--budget-round", type=float, default=1.0, help="minutes for each later round")
    parser.add_argument("--budget-scribble", type=float, default=3.0, help="minutes for scribbles and dense")
    parser.add_argument("--scribble", type=float, default=0.05, help="the largest share of pixels a scribble labels")
    parser.add_argument("--scribble-styles", default=",".join(SCRIBBLE_STYLES), help="how strokes are simulated")
    parser.add_argument("--arms", help="measure only these (e.g. scribble-border); report the rest as cached")
    parser.add_argument("--threads", type=int, help="torch threads of every run (OMP_NUM_THREADS)")
    parser.add_argument("--through-api", action="store_true", help="drive the labelling page's HTTP API")
    parser.add_argument("--work", default="/tmp/medseg-labelling")
    parser.add_argument("--out", default="labelling.json")
    parser.add_argument("--markdown", help="also write the tables here, and the curves beside it (PNG)")
    parser.add_argument("--direct", help="with --through-api: the direct benchmark's JSON, to set the figures beside")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    budgets = Budgets(args.budget_first, args.budget_round, args.budget_scribble)
    names, seeds = args.datasets.split(","), [int(s) for s in args.seeds.split(",")]
    mode = "api" if args.through_api else "direct"
    tool: Tool = Commands()
    if args.through_api:
        from labelling_api import PageApi

        tool = PageApi()
    styles = args.scribble_styles.split(",")
    cells = Cells(Path(args.work), code_version(), frozenset(args.arms.split(",")) if args.arms else None)
    missing = [name for name in names if not (SHARED / name).is_dir()]
    if missing:
        raise SystemExit(f"{SHARED / missing[0]} not found: the benchmark needs ../shared/data")
    try:
        for seed in seeds:  # every dataset's first seed before any second: an early stop leaves a complete picture
            for name in names:
                run_dataset(Source.of(DATASETS[name]), seed, budgets, args.scribble, styles, tool, cells, mode)
    finally:
        tool.close()
    targets, markdown = summarise(cells.done, names, seeds, args.scribble, styles, budgets, mode)
    if args.through_api:
        direct = json.loads(Path(args.direct).read_text())["cells"] if args.direct else []
        markdown += "\n" + "\n".join(timings_table(cells.done, budgets) + agreement_table(cells.done, direct))
    codes = sorted({cell["code"] for cell in cells.done})
    header = (f"Machine: {platform.machine()}, {os.environ.get('OMP_NUM_THREADS', 'all')} thread(s); "
              f"budgets: first round {budgets.first:g} min, later rounds {budgets.round:g} min, scribbles "
              f"{budgets.scribble:g} min; {mode}; cells measured by code {', '.join(codes)}.\n\n")
    print(markdown)
    Path(args.out).write_text(json.dumps({"cells": cells.done, "targets": targets}, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(header + markdown)
        curves_png(targets, Path(args.markdown).with_suffix(".png"))


if __name__ == "__main__":
    main()
