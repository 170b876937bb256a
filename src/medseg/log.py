"""The one logger (``medseg``) and the one progress style: a tqdm bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def get_logger() -> logging.Logger:
    logger = logging.getLogger("medseg")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def log_to_file(path: Path) -> logging.Handler:
    """Also write the log to ``path`` (appending); returns the handler so the caller can remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%d %H:%M:%S"))
    get_logger().addHandler(handler)
    return handler


def is_interactive() -> bool:
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate with a progress bar on a terminal; silently otherwise (callers log their own periodic lines)."""
    if is_interactive():
        yield from tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False)
    else:
        yield from iterable
