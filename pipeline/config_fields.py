"""Typed access to one mapping of a YAML file, with errors that name the file and the field.

Robot configs and import mapping files read their fields through subclasses of
:class:`Fields`, which add the field types they need.
"""

from __future__ import annotations

import difflib
from typing import Any

from pipeline.errors import ConfigError


class Fields:
    """One mapping of a file (``prefix`` names where it sits, e.g. ``joints[3].``)."""

    def __init__(self, raw: Any, source: str, prefix: str) -> None:
        if not isinstance(raw, dict):
            where = prefix.rstrip(".") or "<top level>"
            raise ConfigError(source, where, f"expected a mapping, got {type(raw).__name__}")
        self.raw = raw
        self.source = source
        self.prefix = prefix

    def _get(self, key: str) -> Any:
        if key not in self.raw:
            near = difflib.get_close_matches(key, [str(k) for k in self.raw], n=1, cutoff=0.75)
            hint = f" (there is a field {self.prefix}{near[0]!r}: misspelled?)" if near else ""
            raise ConfigError(self.source, self.prefix + key, f"missing{hint}")
        return self.raw[key]

    def sub(self, key: str) -> Fields:
        """The mapping under ``key``, read with the same field types."""
        return type(self)(self._get(key), self.source, f"{self.prefix}{key}.")

    def only(self, allowed: set[str]) -> None:
        """Refuse a field not in ``allowed``, suggesting the allowed name it is closest to."""
        for key in sorted(self.raw, key=str):  # YAML keys may be int/bool/None too
            if key not in allowed:
                near = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.75)
                hint = f" (did you mean {near[0]!r}?)" if near else f"; allowed: {', '.join(sorted(allowed))}"
                raise ConfigError(self.source, f"{self.prefix}{key}", f"unknown field{hint}")
