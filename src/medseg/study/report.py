"""Study outputs: results and pairwise-comparison tables (csv/json/md), plots, a prediction gallery and a
self-contained report.html. A multi-class study also shows each foreground class's Dice beside their mean (tables
and a plot) and draws the gallery in the class colours, with their legend."""

from __future__ import annotations

import base64
import html
from dataclasses import asdict
import math
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from medseg.data.datasets import load_items, load_sample
from medseg.inference.predictor import Predictor
from medseg.run.history import read_history
from medseg.visualize import (ERROR_LEGEND, GridRow, class_colour, figure_png, image_grid, legend_handles,
                                     legend_image, overlay, png_bytes, pyplot, to_display)
from medseg.files import (atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_text, csv_float,
                          read_csv)
from medseg.stats import PairedComparison, smallest_holm_p
from medseg.study.records import ModelChoice, ModelRow, StudyFolder, StudyRecord, StudySpec

if TYPE_CHECKING:
    from medseg.config import Config

# (column, header, higher is better)
TABLE_COLUMNS = [
    ("rank", "Rank", None), ("dice", "Dice", True), ("dice_ci", "Dice 95% CI", None), ("iou", "IoU", True),
    ("accuracy", "Accuracy", True), ("precision", "Precision", True), ("recall", "Recall", True),
    ("hd95", "HD95 (px)", False), ("dice_pooled", "Dice (pooled)", True),
    ("params", "Params", False), ("gflops", "GFLOPs", False), ("cpu_latency_ms", "CPU ms", False),
    ("gpu_latency_ms", "GPU ms", False), ("train_seconds", "Train s", False), ("epochs", "Epochs", None),
]


def _format(column: str, value: Any, std: Any = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column == "dice_ci":
        return f"[{value[0]:.4f}, {value[1]:.4f}]"
    if column == "params":
        text = f"{int(round(value)):,}"
    elif column in ("dice", "iou", "accuracy", "precision", "recall", "dice_pooled") or _class_id(column):
        text = f"{value:.4f}"
    elif column in ("epochs", "rank"):
        text = f"{value:.0f}"
    elif column == "gflops":
        text = f"{value:.3g}"
    else:
        text = f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)) and column not in ("params", "gflops"):
        text += f" ± {_format(column, std)}"
    return text


def _best(rows: Sequence[ModelRow], column: str, higher: bool | None) -> float | None:
    values = [v for v in (r.value(column) for r in rows)
              if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if higher is None or not values or len(rows) < 2:
        return None
    return max(values) if higher else min(values)


def _class_id(column: str) -> int | None:
    """``k`` of a per-class Dice column ``dice_c<k>`` (foreground classes: k >= 1)."""
    match = re.fullmatch(r"dice_c(\d+)", column)
    return int(match.group(1)) if match else None


def table_columns(rows: Sequence[ModelRow], class_names: Sequence[str] | None = None
                  ) -> list[tuple[str, str, bool | None]]:
    """:data:`TABLE_COLUMNS`; with per-class Dice in the rows (multi-class), the mean foreground Dice followed by
    each class's (``dice_c<k>``, headed with the class name)."""
    ids = sorted({k for row in rows for k in map(_class_id, row.means) if k is not None})
    if not ids:
        return TABLE_COLUMNS
    names = [class_names[k] if class_names and k < len(class_names) else f"class {k}" for k in ids]
    at = [c[0] for c in TABLE_COLUMNS].index("dice_ci") + 1
    return ([("dice", "Dice (mean fg)", True) if c[0] == "dice" else c for c in TABLE_COLUMNS[:at]]
            + [(f"dice_c{k}", f"Dice {name}", True) for k, name in zip(ids, names)] + TABLE_COLUMNS[at:])


def table_cells(rows: Sequence[ModelRow], class_names: Sequence[str] | None = None
                ) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Headers and, per row, ``(text, is_best)`` cells; shared by the Markdown and HTML tables."""
    columns = [c for c in table_columns(rows, class_names) if any(r.value(c[0]) is not None for r in rows)]
    headers = ["Model"] + [header for _, header, _ in columns]
    body = []
    for row in rows:
        cells = [(row.model, False)]
        for column, _, higher in columns:
            best = _best(rows, column, higher)
            value = row.value(column)
            cells.append((_format(column, value, row.spread(column)),
                          best is not None and value is not None and value == best))
        body.append(cells)
    return headers, body


def markdown_table(rows: Sequence[ModelRow], class_names: Sequence[str] | None = None) -> str:
    headers, body = table_cells(rows, class_names)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for cells in body:
        lines.append("| " + " | ".join(f"**{text}**" if best else text for text, best in cells) + " |")
    return "\n".join(lines) + "\n"


PAIR_HEADERS = ["A", "B", "images", "mean Dice A - B", "95% CI", "Wilcoxon p", "Holm p", "significant"]


def pair_cells(pairs: Sequence[PairedComparison]) -> list[list[str]]:
    """One row of text per pair; ``*`` marks differences significant at 5% after Holm's correction."""
    return [[p.a, p.b, str(p.n_images), f"{p.mean_difference:+.4f}", f"[{p.ci_low:+.4f}, {p.ci_high:+.4f}]",
             f"{p.p_value:.3g}", f"{p.p_holm:.3g}", "*" if p.significant else ""] for p in pairs]


def pairs_markdown(pairs: Sequence[PairedComparison]) -> str:
    lines = ["| " + " | ".join(PAIR_HEADERS) + " |", "|" + "---|" * len(PAIR_HEADERS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in pair_cells(pairs)]
    return "\n".join(lines) + "\n"


STATISTICS_NOTE = ("Rank: 1 + the number of models whose 95% interval lies wholly above this model's (overlapping "
                   "intervals share a rank). Intervals: percentile bootstrap (10,000 resamples) of mean per-image "
                   "test Dice over test images, and over seeds when there are several. Pairs: per-image Dice "
                   "differences (seeds averaged), bootstrap 95% CI, two-sided Wilcoxon signed-rank p, Holm-corrected "
                   "over all pairs; * = significant at 5%.")


def power_note(pairs: Sequence[PairedComparison], alpha: float = 0.05) -> str:
    """A sentence when the test set is too small for any pair to reach ``alpha`` after Holm's correction."""
    n_images = min((pair.n_images for pair in pairs), default=0)
    smallest = smallest_holm_p(n_images, len(pairs))
    if not pairs or smallest <= alpha:
        return ""
    return (f" With {n_images} test images no difference can be significant: the smallest two-sided Wilcoxon p "
            f"is {smallest_holm_p(n_images, 1):.3g}, and Holm's correction over {len(pairs)} pairs lifts it to "
            f"{smallest:.3g}; more test images are needed to tell these models apart.")


def write_tables(out: Path, rows: Sequence[ModelRow], records: Sequence[StudyRecord],
                 pairs: Sequence[PairedComparison], note: str, class_names: Sequence[str] | None = None) -> None:
    models = [row.to_dict() for row in rows]
    atomic_write_csv(out / "results.csv", models)
    atomic_write_csv(out / "pairs.csv", [asdict(p) | {"significant": p.significant} for p in pairs])
    atomic_write_json(out / "results.json", {"models": models, "pairs": [asdict(p) for p in pairs],
                                             "runs": [record.to_dict() for record in records]})
    atomic_write_text(out / "results.md", markdown_table(rows, class_names) + "\n" + note + "\n\n"
                      + pairs_markdown(pairs) + "\n" + STATISTICS_NOTE + "\n")


def interval_plot(rows: Sequence[ModelRow]) -> bytes:
    """Each (ranked) model's mean test Dice with its 95% interval, best first."""
    plt = pyplot()
    ordered = sorted(rows, key=lambda r: r.dice)
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1.2))
    for y, row in enumerate(ordered):
        low, high = row.dice_ci
        ax.errorbar(row.dice, y, xerr=[[row.dice - low], [high - row.dice]], fmt="o", capsize=3, color="tab:blue")
    ax.set_yticks(range(len(ordered)), [f"{r.model} (rank {r.rank})" for r in ordered], fontsize=8)
    ax.set(xlabel="test Dice (mean per image) with 95% bootstrap interval", title="Model Dice with intervals")
    ax.grid(alpha=0.3, axis="x")
    return figure_png(fig)


def scatter_plot(rows: Sequence[ModelRow], x_key: str, x_label: str, log_x: bool) -> bytes:
    """Test Dice against ``x_key``, one point per model with error bars across seeds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        x = row.value(x_key)
        if x is None:
            continue
        err = row.spread("dice")
        ax.errorbar(x, row.dice, yerr=None if err is None or math.isnan(err) else err, fmt="o", capsize=3,
                    label=row.model)
        ax.annotate(row.model, (x, row.dice), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=x_label, ylabel="test Dice (mean per image)", title=f"Dice vs {x_label}")
    ax.grid(alpha=0.3)
    return figure_png(fig)


def class_dice_plot(rows: Sequence[ModelRow], class_names: Sequence[str]) -> bytes:
    """Each model's test Dice per foreground class (bars in the class colours, error bars across seeds)."""
    plt = pyplot()
    ids = list(range(1, len(class_names)))
    width = 0.8 / len(ids)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rows) * len(ids) + 2), 4))
    for j, k in enumerate(ids):
        values = [row.means.get(f"dice_c{k}", math.nan) for row in rows]
        spread = [row.stds.get(f"dice_c{k}", math.nan) for row in rows]
        ax.bar(np.arange(len(rows)) + (j - (len(ids) - 1) / 2) * width, values, width,
               yerr=None if all(math.isnan(e) for e in spread) else np.nan_to_num(spread), capsize=2,
               color=np.array(class_colour(k)) / 255, edgecolor="0.3")
    ax.set_xticks(range(len(rows)), [row.model for row in rows], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="test Dice (mean per image)", title="Dice per class", ylim=(0, 1.02))
    ax.legend(handles=legend_handles(class_names), fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    return figure_png(fig)


def curves_plot(histories: dict[str, list[tuple[int, float]]]) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in histories.items():
        if points:
            ax.plot(*zip(*points), marker=".", label=label)
    ax.set(xlabel="step", ylabel="validation Dice", title="Validation Dice during training (first seed)", ylim=(0, 1))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def box_plot(per_image: dict[str, list[float]]) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(per_image)), 4))
    labels = list(per_image)
    ax.boxplot([per_image[k] for k in labels], showmeans=True)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="test Dice per image", title="Per-image test Dice (all seeds)", ylim=(0, 1.02))
    ax.grid(alpha=0.3, axis="y")
    return figure_png(fig)


def gallery(entries: list[tuple[str, np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, float]]]],
            tile: int = 160, class_names: Sequence[str] | None = None) -> Image.Image:
    """Rows of image | truth | every model's prediction, captioned with Dice. Binary: predictions in TP cyan, FP
    red, FN yellow. Multi-class (``class_names`` of more than 2): truth and predictions in the class colours (so a
    class mistaken for another shows), the colour legend under the grid."""
    multi = class_names is not None and len(class_names) > 2
    rows = []
    for title, image, truth, predictions in entries:
        panels = [("image", to_display(image)), ("truth", overlay(image, truth))]
        panels += [(f"{label} {dice:.3f}", overlay(image, labels, None if multi else truth))
                   for label, (labels, dice) in predictions.items()]
        rows.append(GridRow(title if multi else f"{title}   [{ERROR_LEGEND}]", panels))
    grid = image_grid(rows, tile)
    if not multi:
        return grid
    legend = legend_image(class_names, grid.width)
    framed = Image.new("RGB", (grid.width, grid.height + legend.height), "white")
    framed.paste(grid, (0, 0))
    framed.paste(legend, (0, grid.height))
    return framed


def build_gallery(study: StudyFolder, spec: StudySpec, choices: Sequence[ModelChoice]) -> Image.Image:
    """Worst, median and best test images by mean Dice over models (first seed), every model's prediction."""
    seed = spec.seeds[0]
    per_model = {c.label: {r["id"]: csv_float(r["dice"]) for r in read_csv(study.per_image(c.folder, seed))}
                 for c in choices}
    ids = sorted(set.intersection(*(set(v) for v in per_model.values())))
    mean_dice = {i: float(np.nanmean([per_model[m][i] for m in per_model])) for i in ids}
    ranked = sorted(ids, key=lambda i: mean_dice[i])
    picks = {"worst": ranked[0], "median": ranked[len(ranked) // 2], "best": ranked[-1]}
    items = {item.id: item for item in load_items(spec.data, spec.base_config().data.format)}
    predictors = {c.label: Predictor.from_run(study.run(c.trained_as().folder, seed).path,
                                              prune_depth=c.prune_depth) for c in choices}
    first = next(iter(predictors.values())).spec
    entries = []
    for kind, item_id in picks.items():
        sample = load_sample(items[item_id], first.channels, first.n_classes)
        predictions = {label: (predictor.predict(sample.image), per_model[label][item_id])
                       for label, predictor in predictors.items()}
        entries.append((f"{kind}: {item_id} (mean Dice {mean_dice[item_id]:.3f})", sample.image, sample.mask,
                        predictions))
    return gallery(entries, class_names=first.class_names)


def write_report(out: Path, spec: StudySpec, rows: Sequence[ModelRow], records: Sequence[StudyRecord],
                 choices: Sequence[ModelChoice], pairs: Sequence[PairedComparison]) -> None:
    """All study outputs from finished runs."""
    config = spec.base_config()
    seeds_note = (f"mean ± std over seeds {spec.seeds}" if len(spec.seeds) > 1
                  else f"single seed ({spec.seeds[0]}): no spread across seeds is reported")
    size = config.data.resize or config.data.patch_size
    widths = (f"width scale {config.model.width_scale}" if config.model.width_scale
              else f"widths {config.model.widths}" if config.model.widths else "default (full) widths")
    class_names = next((r.class_names for r in records if r.class_names), None)  # multi-class only
    classes_note = (f" Dice is the mean over the foreground classes ({', '.join(class_names[1:])}), each class's "
                    "beside it; intervals, ranks and pairs use the mean." if class_names else "")
    note = (f"Test split only; each run's own weight selection and post-processing (chosen on validation). "
            f"{seeds_note}. Metrics are per-image means "
            f"(pooled Dice over all test pixels also shown); HD95 in pixels.{classes_note} Input {size}x{size}, "
            f"{widths}. Latency: batch 1, {size}x{size}, median of 10 runs, "
            f"{platform.processor() or platform.machine()}.{power_note(pairs)}")
    write_tables(out, rows, records, pairs, note, class_names)
    plots = {
        "dice_intervals.png": interval_plot(rows),
        "dice_vs_params.png": scatter_plot(rows, "params", "parameters", log_x=True),
        "dice_vs_latency.png": scatter_plot(rows, "cpu_latency_ms", "CPU latency (ms)", log_x=False),
    }
    study, histories, per_image = StudyFolder(out), {}, {}
    for choice in choices:
        history = read_history(study.run(choice.trained_as().folder, spec.seeds[0]).path)
        histories[choice.label] = [(row.step, row.val_dice) for row in history if row.validated]
        scores = [csv_float(r["dice"]) for s in spec.seeds for r in read_csv(study.per_image(choice.folder, s))]
        per_image[choice.label] = [d for d in scores if not math.isnan(d)]
    plots["val_dice_curves.png"] = curves_plot(histories)
    plots["dice_boxplot.png"] = box_plot(per_image)
    if class_names:
        plots["dice_per_class.png"] = class_dice_plot(rows, class_names)
    plots["gallery.png"] = png_bytes(build_gallery(study, spec, choices))
    for name, data in plots.items():
        atomic_write_bytes(out / name, data)
    atomic_write_text(out / "report.html", render_html(spec, config, rows, pairs, note, plots, class_names))


def legend_html(class_names: Sequence[str] | None) -> str:
    """The class colour legend as HTML (multi-class studies; empty otherwise)."""
    if not class_names or len(class_names) <= 2:
        return ""
    items = "".join(f'<li><span class="swatch" style="background: rgb{class_colour(k)}"></span>'
                    f"{html.escape(str(name))}</li>" for k, name in enumerate(class_names) if k)
    return f'<p>Class colours (gallery and per-class plot):</p><ul id="legend">{items}</ul>'


def _schedule(config: Config) -> dict[str, Any]:
    """How long each run trains: to the budget, else for the iterations, else for the epochs."""
    train = config.train
    return {"epochs": "-" if train.budget_minutes or train.iterations else train.epochs,
            "iterations": "-" if train.budget_minutes else train.iterations or "-",
            "budget per run (min)": train.budget_minutes}


def render_html(spec: StudySpec, config: Config, rows: Sequence[ModelRow], pairs: Sequence[PairedComparison],
                note: str, plots: dict[str, bytes], class_names: Sequence[str] | None = None) -> str:
    headers, body = table_cells(rows, class_names)
    pair_head = "".join(f"<th>{html.escape(h)}</th>" for h in PAIR_HEADERS)
    pair_rows = "".join(
        f"<tr{' class=significant' if pair.significant else ''}>"
        + "".join(f"<td>{html.escape(text)}</td>" for text in cells) + "</tr>"
        for pair, cells in zip(pairs, pair_cells(pairs)))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    table_rows = "".join(
        "<tr>" + "".join(f"<td{' class=best' if best else ''}>{html.escape(text)}</td>" for text, best in cells)
        + "</tr>" for cells in body)
    images = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, data in plots.items())
    protocol = {
        "data": spec.data, "models": spec.models, "seeds": spec.seeds, "base config": spec.config or "(defaults)",
        "overrides": spec.overrides, **_schedule(config), "optimizer": f"{config.optim.name} lr {config.optim.lr}",
        "schedule": config.optim.schedule, "loss": config.loss.name,
        "input": f"patch {config.data.patch_size}" if not config.data.resize else f"resize {config.data.resize}",
        "batch size": config.train.batch_size, "split seed": config.data.split_seed,
    }
    protocol_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                            for k, v in protocol.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>medseg study</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child {{ text-align: left; }}
td.best {{ font-weight: bold; background: #e8f6e8; }}
tr.significant td {{ background: #fff4d6; font-weight: bold; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
#legend {{ list-style: none; padding: 0; display: flex; gap: 1.5em; }}
.swatch {{ display: inline-block; width: 1em; height: 1em; margin-right: 0.4em; vertical-align: -0.15em;
           border: 1px solid #555; }}
</style></head><body>
<h1>medseg comparison study</h1>
<h2>Protocol</h2><table id="protocol">{protocol_rows}</table>
<h2>Results</h2><p>{html.escape(note)}</p>
<table id="results"><thead><tr>{head}</tr></thead><tbody>{table_rows}</tbody></table>
<h2>Which differences are real</h2><p>{html.escape(STATISTICS_NOTE)}</p>
<table id="pairs"><thead><tr>{pair_head}</tr></thead><tbody>{pair_rows}</tbody></table>
<h2>Plots and gallery</h2>{legend_html(class_names)}{images}
</body></html>
"""
