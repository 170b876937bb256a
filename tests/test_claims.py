"""Claims: one holder at a time, released when the holder's process ends however it ends; shard order."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medseg.claims import shard_order, try_claim
from medseg.cli import parse_shard
from medseg.errors import MedsegError


def test_one_holder_at_a_time(tmp_path):
    first = try_claim(tmp_path / "run", "first")
    assert first is not None and try_claim(tmp_path / "run", "second") is None
    first.release()
    again = try_claim(tmp_path / "run", "again")
    assert again is not None and "again" in (tmp_path / "run" / ".claim").read_text()
    again.release()


def test_a_killed_holder_releases_its_claim(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from medseg.claims import try_claim; claim = try_claim(sys.argv[1], 'child'); "
        "print('held', flush=True); sys.stdin.read()"), str(tmp_path / "run")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"  # the child holds the claim
    assert try_claim(tmp_path / "run") is None
    holder.kill()
    holder.wait()
    claim = try_claim(tmp_path / "run")
    assert claim is not None
    claim.release()


def test_shard_order_and_parsing():
    assert shard_order(5, None) == [0, 1, 2, 3, 4]
    assert shard_order(5, (1, 2)) == [1, 3, 0, 2, 4]
    assert parse_shard("1/4") == (1, 4)
    with pytest.raises(MedsegError, match="outside 0..1"):
        parse_shard("2/2")
