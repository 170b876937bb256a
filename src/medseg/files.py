"""Reading and writing files: the one atomic writer (every file medseg writes goes through a temp file in the same
folder, fsync and rename, so a kill at any moment leaves either the old file or the new one, never a torn one) and
the readers of JSON, YAML and CSV files, whose failures are one-line MedsegErrors naming the file."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from medseg.errors import MedsegError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, rename (and fsync the folder)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise MedsegError(path, f"could not write ({exc.strerror or exc}); the previous file is unchanged") from None
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def atomic_create_json(path: Path, obj: Any) -> bool:
    """Create ``path`` with ``obj`` as JSON, complete or not at all, unless it exists (then False): the file
    another process sees is never half-written, and two creators cannot both win."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    atomic_write_json(tmp, obj)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_csv(path: Path, rows: Sequence[Mapping[str, Any]], fieldnames: Iterable[str] | None = None) -> None:
    """Rows as CSV with a header (the union of the rows' keys, in first-seen order, unless given)."""
    names = list(fieldnames) if fieldnames is not None else list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_json(path: Path, what: str) -> Any:
    """A JSON file; unreadable or invalid files are MedsegErrors saying what the file was meant to be."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedsegError(path, f"cannot read the {what} ({exc})") from None


YAML_SUFFIXES = (".yaml", ".yml")


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON or YAML file (by its suffix) that must hold a mapping; ``what`` names it in errors."""
    path = Path(path)
    if path.suffix.lower() not in YAML_SUFFIXES:
        mapping = read_json(path, what)
    else:
        try:
            mapping = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise MedsegError(path, f"cannot read the {what} ({exc})") from None
    if not isinstance(mapping, dict):
        raise MedsegError(path, f"the {what} is not a mapping")
    return mapping


def csv_float(text: str | None) -> float:
    """A number from a CSV cell; an empty cell is NaN."""
    return float(text) if text not in (None, "") else float("nan")


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header, as people save them: a UTF-8 byte-order mark (Excel) and CRLF line ends
    are accepted, and header names are stripped of surrounding spaces."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is not None:
                reader.fieldnames = [name.strip() for name in reader.fieldnames]
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedsegError(path, f"cannot read CSV ({exc})") from None
