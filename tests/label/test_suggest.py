"""`medseg suggest`: distinct images without a complete mask, the most unsure first, and near-duplicates not all
chosen."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from torch import nn

from medseg.data.datasets import load_items
from medseg.inference.predictor import Predictor, TorchBackend
from medseg.label.suggest import Assessment, choose, suggest
from medseg.models import create_model
from tests.data import fixtures
from tests.helpers import contract_for


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


class Threshold(nn.Module):
    """Foreground where the image is brighter than mid-grey: sure of a clean two-level image, unsure of a noisy
    one."""

    def forward(self, x):
        return 40 * (x - 0.5)


def test_suggest_ranks_distinct_incomplete_images_and_skips_copies(tmp_path):
    """Dense, partial and unlabelled images, with 5 copies of one noisy image (the most unsure): K distinct
    suggestions, none with a complete mask, and at most one copy among the top 2."""
    rng = np.random.default_rng(0)
    for k in range(16):
        ys, xs = np.mgrid[:48, :48]
        disc = (ys - rng.integers(12, 36)) ** 2 + (xs - rng.integers(12, 36)) ** 2 < rng.integers(36, 100)
        fixtures._png(tmp_path / "images" / f"case{k:02d}.png", np.where(disc, 200, 40).astype(np.uint8)
                      + rng.integers(0, 30, disc.shape).astype(np.uint8))
        if k < 6:  # dense
            fixtures._png(tmp_path / "masks" / f"case{k:02d}.png", (disc * 255).astype(np.uint8))
        elif k < 9:  # partial
            fixtures._png(tmp_path / "masks" / f"case{k:02d}.png", np.where(xs < 24, disc * 255, 128).astype(np.uint8))
    noisy = np.clip(rng.normal(120, 60, (48, 48)), 0, 255).astype(np.uint8)
    for k in range(5):
        fixtures._png(tmp_path / "images" / f"copy{k}.png", noisy)
    spec = replace(contract_for(create_model("unet", 1, 1, widths=(4, 8)), patch_size=None).inference,
                   normalize="unit")
    chosen = suggest(Predictor([TorchBackend(Threshold())], spec), load_items(tmp_path), 6)
    ids = [s.id for s in chosen]
    assert len(ids) == len(set(ids)) == 6 and not {f"case{k:02d}" for k in range(6)} & set(ids)
    assert {s.label for s in chosen} <= {"none", "partial"} and all(s.reason for s in chosen)
    assert ids[0].startswith("copy")  # a copy is the most unsure: without the discount the top 2 would be copies
    assert not ids[1].startswith("copy")
