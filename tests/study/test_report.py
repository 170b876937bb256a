"""Table, plot and gallery builders on fake results."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from medseg.study.compare import ModelChoice
from medseg.stats import PairedComparison
from medseg.study.records import StudyRecord, aggregate
from medseg.study.report import (box_plot, class_dice_plot, curves_plot, gallery, markdown_table, power_note,
                                 scatter_plot, table_cells)


def _record(model: str, seed: int, dice: float, hd95: float, params: int, cpu_latency_ms: float,
            **extra) -> StudyRecord:
    scores = {name: value for metric in ("dice", "iou", "accuracy", "precision", "recall", "hd95")
              for name, value in ((metric, dice), (f"{metric}_pooled", dice))}
    scores |= {"hd95": hd95, "hd95_pooled": hd95}
    return StudyRecord(model=model, seed=seed, params=params, gflops=1.0, input_size=64, cpu_latency_ms=cpu_latency_ms,
                       gpu_latency_ms=None, train_seconds=60.0, epochs=3, steps=30, weights="best_model",
                       n_test_images=16, trained_in=f"runs/{model}/seed{seed}", prune_depth=None, **scores, **extra)


RECORDS = [_record("unet", 0, 0.80, 5.0, 1000, 10.0), _record("unet", 1, 0.90, 3.0, 1000, 12.0),
           _record("segnet", 0, 0.70, 2.0, 5000, 20.0), _record("segnet", 1, 0.70, 4.0, 5000, 20.0)]


def test_model_choice_parsing():
    choice = ModelChoice.parse("usegnet:skips=1:conv_bias=false")
    assert choice.name == "usegnet" and choice.options == {"skips": 1, "conv_bias": False}
    assert choice.folder == "usegnet__skips=1__conv_bias=false"


def test_aggregate_mean_and_std_over_seeds():
    rows = aggregate(RECORDS, ["unet", "segnet"])
    unet = rows[0]
    assert math.isclose(unet.dice, 0.85) and math.isclose(unet.spread("dice"), 0.05) and unet.seeds == 2
    single = aggregate(RECORDS[:1], ["unet"])[0]
    assert math.isnan(single.spread("dice"))


def test_records_round_trip_flat_and_rows_keep_their_columns(tmp_path):
    from medseg.files import atomic_write_json

    record = _record("unet", 0, 0.8, 5.0, 1000, 10.0, class_names=("bg", "a", "b"), class_dice={1: 0.7, 2: 0.9})
    flat = record.to_dict()
    assert list(flat)[:3] == ["model", "seed", "params"] and list(flat)[-3:] == ["class_names", "dice_c1", "dice_c2"]
    atomic_write_json(tmp_path / "record.json", flat)
    assert StudyRecord.load(tmp_path / "record.json") == record
    row = aggregate([record], ["unet"])[0].to_dict()
    assert list(row)[:4] == ["model", "seeds", "params", "params_std"] and list(row)[-1] == "gpu_latency_ms"
    assert row["dice_c2"] == 0.9 and "class_names" not in row and "seed" not in row and "prune_depth" not in row


def test_a_record_with_a_missing_or_unknown_key_is_an_error_naming_the_file(tmp_path):
    from medseg.errors import MedsegError

    flat = RECORDS[0].to_dict()
    (tmp_path / "record.json").write_text(json.dumps({**flat, "dise": 0.5}))
    with pytest.raises(MedsegError, match="record.json: study record: unknown key 'dise'"):
        StudyRecord.load(tmp_path / "record.json")
    del flat["hd95"]
    (tmp_path / "record.json").write_text(json.dumps(flat))
    with pytest.raises(MedsegError, match="record.json: study record: missing key 'hd95'"):
        StudyRecord.load(tmp_path / "record.json")


def test_power_note_only_when_no_pair_can_be_significant():
    def pairs(n_images: int, count: int) -> list[PairedComparison]:
        return [PairedComparison("a", f"b{i}", n_images, 0.01, 0.0, 0.02, 0.03) for i in range(count)]

    assert "With 6 test images no difference can be significant" in power_note(pairs(6, 15))
    assert "0.469" in power_note(pairs(6, 15))  # 15 x 2 / 2**6
    assert power_note(pairs(16, 15)) == "" and power_note([]) == ""


def test_tables_mark_the_best_value_per_column():
    rows = aggregate(RECORDS, ["unet", "segnet"])
    headers, body = table_cells(rows)
    dice_col, hd_col, params_col = headers.index("Dice"), headers.index("HD95 (px)"), headers.index("Params")
    assert body[0][dice_col] == ("0.8500 ± 0.0500", True) and body[1][dice_col][1] is False
    assert body[1][hd_col][1] is True and body[0][hd_col][1] is False  # lower HD95 is better
    assert body[0][params_col] == ("1,000", True)
    markdown = markdown_table(rows)
    assert "**0.8500 ± 0.0500**" in markdown and markdown.count("\n") == 4
    assert "GPU ms" not in headers  # no GPU measurements: no empty column


def _decodes(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_plots_render():
    rows = aggregate(RECORDS, ["unet", "segnet"])
    assert _decodes(scatter_plot(rows, "params", "parameters", log_x=True))[0] > 100
    assert _decodes(curves_plot({"unet": [(1, 0.5), (2, 0.7)], "segnet": [(1, 0.4)]}))[0] > 100
    assert _decodes(box_plot({"unet": [0.8, 0.9, 0.7], "segnet": [0.6, 0.7]}))[0] > 100


def test_gallery_layout_and_error_colours():
    image = np.zeros((16, 16, 1), np.float32)
    truth = np.zeros((16, 16), np.int64)
    truth[4:8, 4:8] = 1
    prediction = np.zeros_like(truth)
    prediction[4:8, 6:10] = 1
    grid = gallery([("case", image, truth, {"a": (prediction, 0.5), "b": (truth, 1.0)})], tile=16)
    assert grid.size == (4 * 16, 16 + 28)
    pixels = np.asarray(grid)[28:, 32:48]  # model a's panel
    colours = {tuple(c) for c in pixels.reshape(-1, 3)}
    assert any(c[0] > 100 and c[1] < 60 for c in colours)  # false positives in red
    assert any(c[0] > 100 and c[1] > 90 and c[2] < 60 for c in colours)  # false negatives in yellow


def test_significance_marks_render_in_the_browser(tmp_path):
    from medseg.stats import PairedComparison
    from medseg.study.compare import StudySpec
    from medseg.study.report import pairs_markdown, render_html
    from tests.study.browser import render

    rows = [replace(row, dice_ci=(low, high), rank=rank) for row, (low, high, rank)
            in zip(aggregate(RECORDS, ["unet", "segnet"]), [(0.8, 0.9, 1), (0.6, 0.75, 2)])]
    pairs = [PairedComparison("unet", "segnet", 16, 0.15, 0.08, 0.22, 0.0004, 0.0008),
             PairedComparison("unet", "unet", 16, 0.0, -0.01, 0.01, 0.9, 1.0)]
    assert pairs_markdown(pairs).count("| * |") == 1
    spec = StudySpec(data="d", models=["unet", "segnet"], seeds=[0, 1])
    (tmp_path / "report.html").write_text(render_html(spec, spec.base_config(), rows, pairs, "note", {}))
    check = render(tmp_path / "report.html", tmp_path / "report.png")
    assert check.console_errors == [] and check.pair_rows == 2
    assert check.significant_marks == ["*"] and int(check.significant_weights[0]) >= 600
    headers, body = table_cells(rows)
    assert body[0][headers.index("Dice 95% CI")][0] == "[0.8000, 0.9000]" and body[1][headers.index("Rank")][0] == "2"
    assert replace(pairs[1], p_holm=0.01).significant


MULTI_CLASS = [replace(record, class_dice={1: record.dice + 0.05, 2: record.dice - 0.05},
                       class_names=("background", "liver", "tumour")) for record in RECORDS]


def test_multi_class_tables_show_per_class_dice_named_by_class_beside_the_mean():
    rows = aggregate(MULTI_CLASS, ["unet", "segnet"])
    headers, body = table_cells(rows, ["background", "liver", "tumour"])
    dice = headers.index("Dice (mean fg)")
    assert headers[dice:dice + 4] == ["Dice (mean fg)", "Dice liver", "Dice tumour", "IoU"]
    assert body[0][headers.index("Dice liver")] == ("0.9000 ± 0.0500", True)
    assert body[1][headers.index("Dice tumour")] == ("0.6500 ± 0.0000", False)
    assert "| Dice liver | Dice tumour |" in markdown_table(rows, ["background", "liver", "tumour"])
    assert "Dice class 1" in table_cells(rows)[0]  # names unknown: the class id
    binary_headers, _ = table_cells(aggregate(RECORDS, ["unet", "segnet"]), ["background", "foreground"])
    assert "Dice" in binary_headers and "Dice (mean fg)" not in binary_headers
    assert _decodes(class_dice_plot(rows, ["background", "liver", "tumour"]))[0] > 100


def test_multi_class_gallery_is_in_class_colours_with_the_legend_under_it():
    from medseg.visualize import class_colour

    image = np.zeros((16, 16, 1), np.float32)
    truth = np.zeros((16, 16), np.int64)
    truth[2:8, 2:8], truth[9:14, 9:14] = 1, 2
    prediction = np.where(truth > 0, 3 - truth, 0)  # each class mistaken for the other
    grid = gallery([("case", image, truth, {"a": (prediction, 0.0)})], tile=16,
                   class_names=["background", "liver", "tumour"])
    assert grid.size[0] == 3 * 16 and grid.size[1] > 16 + 28
    pixels = np.asarray(grid)
    panel = pixels[28:44, 32:48]  # model a's prediction: class colours, not error colours
    assert tuple(panel[4, 4]) != tuple(pixels[28 + 4, 16 + 4])  # differs from the truth panel where swapped
    colour = lambda k: np.array(class_colour(k), np.float32)  # noqa: E731
    tinted = panel[4, 4].astype(np.float32)  # 0.45 of tumour's colour over black
    assert np.allclose(tinted, 0.45 * colour(2), atol=2)
    legend = pixels[44:]
    for k in (1, 2):
        assert (legend == np.array(class_colour(k), np.uint8)).all(axis=2).sum() > 50  # each swatch
