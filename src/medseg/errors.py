"""The one exception type for problems a user can fix (bad data, bad config, bad checkpoint), and the one
"did you mean" lookup used in its messages."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable


class MedsegError(Exception):
    """A user-facing error: names the file (or config key) at fault and the reason, on one line.

    The CLI prints it as ``medseg: error: <where>: <reason>`` and exits non-zero; bugs keep their traceback.
    """

    def __init__(self, where: str | Path | None, reason: str) -> None:
        self.where = str(where) if where is not None else None
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.where}: {self.reason}" if self.where else self.reason)


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.5) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def first_error(exc: Any) -> str:
    """The first problem of a pydantic ``ValidationError`` as ``key: message`` (missing and unknown keys named)."""
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    kind = {"missing": "missing key", "missing_argument": "missing key", "extra_forbidden": "unknown key",
            "unexpected_keyword_argument": "unknown key"}.get(error["type"])
    return f"{kind} {key!r}" if kind else f"{key}: {error['msg']}"
