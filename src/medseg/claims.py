"""Claims on units of work shared by several processes (a training run's folder, study runs, cross-validation
folds): an exclusive, non-blocking ``flock`` on ``<folder>/.claim``. The lock is atomic, and the operating system
drops it when its process ends, however it ends, so an interrupted unit can be picked up by any other process."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import IO

from medseg.errors import MedsegError

CLAIM_FILE = ".claim"


class Claim:
    """An exclusive claim on ``folder``, held until :meth:`release` (or the end of the process)."""

    def __init__(self, folder: Path, handle: IO[str]) -> None:
        self.folder, self.handle = folder, handle

    def release(self) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_claim(folder: Path, owner: str = "") -> Claim | None:
    """Claim ``folder`` (created if needed), or None when another process holds it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / CLAIM_FILE, "a+", encoding="utf-8")
    except OSError as exc:
        raise MedsegError(folder, f"cannot create {CLAIM_FILE} ({exc.strerror})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except OSError as exc:
        handle.close()
        raise MedsegError(folder, f"cannot lock {CLAIM_FILE} ({exc.strerror}); the file system must support flock "
                                  "for sharded runs") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{owner or 'medseg'} pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n")
    handle.flush()
    return Claim(folder, handle)


def holder(folder: Path) -> str:
    """Who holds ``folder``'s claim, as its claim file says (``owner pid N on HOST since TIME``)."""
    try:
        return (Path(folder) / CLAIM_FILE).read_text(encoding="utf-8").strip() or "another process"
    except OSError:
        return "another process"


def shard_order(n_units: int, shard: tuple[int, int] | None) -> list[int]:
    """The order in which a shard visits units: its own share first (``j % N == i``), then the others, so idle
    shards pick up what is left of interrupted ones."""
    if shard is None:
        return list(range(n_units))
    index, count = shard
    own = [j for j in range(n_units) if j % count == index]
    return own + [j for j in range(n_units) if j % count != index]
