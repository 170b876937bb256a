"""The one exception type for problems a user can fix (bad data, bad config, bad checkpoint)."""

from __future__ import annotations

from pathlib import Path


class MedsegError(Exception):
    """A user-facing error: names the file (or config key) at fault and the reason, on one line.

    The CLI prints it as ``medseg: error: <where>: <reason>`` and exits non-zero; bugs keep their traceback.
    """

    def __init__(self, where: str | Path | None, reason: str) -> None:
        self.where = str(where) if where is not None else None
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.where}: {self.reason}" if self.where else self.reason)
