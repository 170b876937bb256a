"""`medseg suggest`: distinct images without a complete mask, the most unsure first, and near-duplicates not all
chosen."""

from __future__ import annotations

import csv
import shutil

import numpy as np
from PIL import Image

from medseg.cli import main
from medseg.label.suggest import Assessment, choose


def test_choose_discounts_near_duplicates_of_a_choice():
    rng = np.random.default_rng(0)
    twin = rng.normal(size=20)
    assessed = [Assessment(f"copy{k}", "none", 0.9, 0.5, twin) for k in range(5)]
    assessed += [Assessment(f"other{k}", "none", 0.5 - 0.01 * k, 0.2, rng.normal(size=20)) for k in range(5)]
    chosen = choose(assessed, 4)
    assert [s.id for s in chosen][:2] == ["copy0", "other0"]
    assert sum(s.id.startswith("copy") for s in chosen) == 1
    assert "resembles" not in chosen[1].reason and chosen[0].rank == 1
    assert [s.id for s in choose(assessed, 20)][-4:] == ["copy1", "copy2", "copy3", "copy4"]  # copies last


def test_suggest_ranks_distinct_incomplete_images_and_skips_copies(demo_run, tmp_path, capsys):
    """Dense, partial and unlabelled images, with 5 copies of one noisy image (the most unsure): K distinct
    suggestions, none with a complete mask, and at most one copy among the top 2."""
    source = demo_run.parent / "data"
    root = tmp_path / "data"
    shutil.copytree(source / "images", root / "images")
    shutil.copytree(source / "masks", root / "masks")
    images = sorted((root / "images").iterdir())
    for path in images[:20]:  # unlabelled
        (root / "masks" / path.name).unlink()
    for path in images[20:24]:  # partial: the top half unlabelled
        mask = np.asarray(Image.open(root / "masks" / path.name)).copy()
        mask[: mask.shape[0] // 2] = 128
        Image.fromarray(mask).save(root / "masks" / path.name)
    noisy = np.asarray(Image.open(images[0])).astype(float)
    noisy += np.random.default_rng(0).normal(0, 50, noisy.shape)
    for k in range(5):
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(root / "images" / f"copy{k}.png")
    out = tmp_path / "suggestions.csv"
    assert main(["suggest", str(demo_run), str(root), "-n", "6", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    ids = [row["id"] for row in rows]
    dense = {path.stem for path in images[24:]}
    assert len(ids) == len(set(ids)) == 6 and not set(ids) & dense
    assert {row["label"] for row in rows} <= {"none", "partial"} and all(row["reason"] for row in rows)
    copies_first = sorted(float(row["uncertainty"]) for row in rows)[-1] == max(
        float(row["uncertainty"]) for row in rows if row["id"].startswith("copy"))
    assert copies_first  # a copy is the most unsure: without the discount the top 2 would both be copies
    assert sum(i.startswith("copy") for i in ids[:2]) <= 1
    assert "wrote" in capsys.readouterr().out
