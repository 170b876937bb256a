"""A labelling loop end to end, as a user runs it: a few images labelled, train, suggest, label what was suggested,
fine-tune with --init, twice."""

from __future__ import annotations

import csv
import shutil

from medseg.cli import main
from medseg.run.folder import RunFolder

TINY = ["--set", "model.widths=[4,8,16]", "--patch-size", "32", "--batch-size", "2", "--set",
        "train.tensorboard=false", "--budget", "0.1m"]


def test_two_rounds_of_suggest_label_and_fine_tune(synthetic_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic_data, root)
    (root / "split.csv").unlink()
    truth = tmp_path / "truth"  # the annotator's masks, handed over when an image is chosen
    shutil.move(root / "masks", truth)
    (root / "masks").mkdir()
    names = sorted(path.name for path in truth.iterdir())
    for name in names[:4]:
        shutil.copy(truth / name, root / "masks" / name)
    run = tmp_path / "round0"
    assert main(["train", "--data", str(root), "--out", str(run), *TINY]) == 0
    test = set(RunFolder(run).read_contract().data.splits.test)
    for round_ in (1, 2):
        out = tmp_path / f"suggest{round_}.csv"
        assert main(["suggest", str(run), str(root), "-n", "2", "--out", str(out)]) == 0
        chosen = [row["id"] for row in csv.DictReader(out.open())]
        assert len(chosen) == 2 and not {f"{i}.png" for i in chosen} & set(names[:4])
        for item in chosen:
            shutil.copy(truth / f"{item}.png", root / "masks" / f"{item}.png")
        tuned = tmp_path / f"round{round_}"
        assert main(["train", "--data", str(root), "--out", str(tuned), "--init", str(run), "--budget", "0.1m",
                     "--set", "train.tensorboard=false"]) == 0
        splits = RunFolder(tuned).read_contract().data.splits
        assert set(splits.test) == test and set(chosen) <= set(splits.train)  # the test split never moves
        assert (RunFolder(tuned).evaluation / "summary.json").is_file()
        run = tuned
