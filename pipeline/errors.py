"""One error hierarchy for the whole project.

Every message names the file, robot, episode or field involved and says what
to do about it, so an operator can act on it without reading the code.
"""

from __future__ import annotations


class RefineryError(Exception):
    """Root of every error Refinery raises on purpose."""


class ConfigError(RefineryError):
    """A robot config (or another config file) is malformed."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        super().__init__(f"{source}: field {field!r}: {problem}")


class ProtocolError(RefineryError):
    """A message on the wire does not follow the protocol."""

    def __init__(self, problem: str, *, field: str | None = None) -> None:
        self.problem = problem
        self.field = field
        where = f" (field {field!r})" if field else ""
        super().__init__(f"protocol error{where}: {problem}")


class HandshakeRefused(RefineryError):
    """The ingest refused a collector's handshake (version, config or key)."""


class StoreError(RefineryError):
    """A raw episode file or journal cannot be read or written."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self) -> tuple[object, ...]:
        # It crosses back from a seal worker process; a subclass arrives as a StoreError
        # (the default pickling would call its __init__ with the message alone).
        return (StoreError, (self.path, self.problem))


class JournalSyncFailed(StoreError):
    """An fsync of the ingest's journal failed. What it covered may not be on disk, and no
    later fsync can tell: Linux reports a failed writeback once and marks its pages clean,
    so a retry returns 0. The ingest stops rather than acknowledge it."""


class SpoolFullError(RefineryError):
    """The collector's on-disk spool reached its disk budget."""


class DriverError(RefineryError):
    """A robot or camera driver cannot deliver data."""


class DatasetError(RefineryError):
    """A Zarr dataset array, chunk or frame cannot be written or read."""

    def __init__(self, where: str, problem: str, *, index: int | None = None) -> None:
        self.where = where
        self.problem = problem
        self.index = index
        at = f" frame {index}" if index is not None else ""
        super().__init__(f"{where}{at}: {problem}")


class ProcessingError(RefineryError):
    """A processing stage cannot handle an episode, a frame or a report."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class BindError(RefineryError):
    """The ingest cannot listen where it was asked to (port in use, bad address)."""

    def __init__(self, endpoint: str, problem: str) -> None:
        self.endpoint = endpoint
        self.problem = problem
        super().__init__(problem)


class RawChecksumMismatch(StoreError):
    """A sealed raw file whose content no longer matches its ``content_sha256``."""

    def __init__(self, path: str, episode_id: str, expected: str, actual: str) -> None:
        self.episode_id = episode_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            path,
            f"content checksum {actual} does not match the sealed content_sha256 {expected}: the file was "
            "changed or damaged after sealing (`refinery verify` checks a whole folder)",
        )
