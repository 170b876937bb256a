"""Every curl line of the README's serving section, run as written (its files made here) against a live server:
each answers, and what it writes or prints is what the README says."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image
from pydicom.data import get_testdata_file

from medseg.inference.predictor import Predictor
from tests.serve.test_server import serving

README = Path(__file__).resolve().parents[2] / "README.md"


def curl_lines() -> list[str]:
    """The curl commands of the README's serving section, comments dropped."""
    section = README.read_text().split("## Serving", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("curl ")]


@pytest.fixture(scope="module")
def address(demo_run):
    yield from serving(Predictor.from_run(demo_run))


def test_every_curl_line_of_the_readme_works_as_written(address, demo_run, tmp_path):
    """Bug: the NIfTI and DICOM lines got 415: curl sends its default form content type with --data-binary."""
    if shutil.which("curl") is None:
        pytest.skip("no curl on PATH")
    shutil.copy(demo_run.parent / "data" / "images" / "cells_000.png", tmp_path / "scan.png")
    volume = np.asarray(Image.open(tmp_path / "scan.png"), np.float32)[..., None].repeat(4, axis=2)
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1])), str(tmp_path / "case.nii.gz"))
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), tmp_path / "frame.dcm")
    (tmp_path / "token.txt").write_text("a-token-of-sixteen-or-more\n")
    lines = curl_lines()
    assert len(lines) == 7
    for line in lines:
        command = line.replace("http://127.0.0.1:8000", f"http://{address}")
        done = subprocess.run(["bash", "-c", f"set -o pipefail; {command} --fail-with-body"], cwd=tmp_path,
                              capture_output=True, timeout=120)
        assert done.returncode == 0, (line, done.stdout[-300:], done.stderr[-300:])
        target = re.search(r"> (\S+)$", command)
        if target is None:  # printed: JSON
            assert json.loads(done.stdout), line
            continue
        written = tmp_path / target.group(1)
        if written.suffix == ".png":
            assert np.asarray(Image.open(written)).shape == (128, 128), line
        elif written.suffix == ".tif":
            assert tifffile.imread(written).shape == (128, 128), line
        else:
            labels = nib.Nifti1Image.from_bytes(gzip.decompress(written.read_bytes()))
            assert labels.shape == volume.shape and np.allclose(labels.affine, np.diag([0.8, 0.8, 2.5, 1])), line
