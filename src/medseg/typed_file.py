"""The one loader of medseg's typed files (plan.yaml, contract.json, fingerprint.json, a study's record.json): a JSON
or YAML mapping whose ``schema_version`` is checked (a newer one refused, an older one migrated), validated into a
frozen dataclass. Every problem is a one-line MedsegError naming the file and the key."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError

from medseg.errors import MedsegError, first_error
from medseg.files import read_mapping

T = TypeVar("T")
Migration = Callable[[dict[str, Any], str | Path], dict[str, Any]]


@dataclass(frozen=True)
class TypedFile(Generic[T]):
    """One kind of typed file: the dataclass it holds, its name in messages (``run contract``), its schema version
    (None: the file has none) and the migration of an older version's mapping to the current one (None: older
    versions are refused). A missing ``schema_version`` is version 0."""

    cls: type[T]
    what: str
    version: int | None = None
    migrate: Migration | None = None

    def load(self, path: str | Path) -> T:
        """Read ``path`` (JSON, or YAML by its suffix) and validate it."""
        return self.validate(read_mapping(path, self.what), path)

    def validate(self, mapping: Any, where: str | Path) -> T:
        """Validate a mapping read from ``where`` (a file, or a header inside one)."""
        if not isinstance(mapping, dict):
            raise MedsegError(where, f"the {self.what} is not a mapping")
        try:
            return self._adapter.validate_python(self._current(mapping, where))
        except ValidationError as exc:
            raise MedsegError(where, f"{self.what}: {first_error(exc)}") from None

    def _current(self, mapping: dict[str, Any], where: str | Path) -> dict[str, Any]:
        """``mapping`` at the current schema version: as it is, or migrated."""
        if self.version is None:
            return mapping
        found = mapping.get("schema_version", 0)
        if not isinstance(found, int) or isinstance(found, bool):
            raise MedsegError(where, f"{self.what}: schema_version: expected int, got {found!r}")
        if found > self.version:
            raise MedsegError(where, f"{self.what} schema {found} is newer than this medseg understands "
                                     f"({self.version}); upgrade medseg")
        if found == self.version:
            return mapping
        if self.migrate is None:
            raise MedsegError(where, f"{self.what} schema {found} is older than this medseg reads ({self.version})")
        return self.migrate(mapping, where)

    @cached_property
    def _adapter(self) -> TypeAdapter:
        return TypeAdapter(self.cls)
