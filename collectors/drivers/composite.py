"""Several drivers seen as one: e.g. simulated joints plus real cameras."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from collectors.drivers.base import Driver, Reading
from pipeline.errors import DriverError


class CompositeDriver(Driver):
    """Merges the readings of several drivers in capture order.

    Each driver's own order is kept (a driver with timestamp faults may stamp
    out of order); readings of different drivers interleave by ``capture_ns``.

    Args:
        drivers: the drivers to merge; the composite owns them and closes them.

    Raises:
        DriverError: if no drivers are given, or (on poll) if two drivers
            deliver the same stream.
    """

    def __init__(self, drivers: Sequence[Driver]) -> None:
        if not drivers:
            raise DriverError("composite driver: needs at least one driver")
        self.drivers = tuple(drivers)
        self._owner: dict[str, int] = {}  # stream name -> index of the driver that delivers it
        self._closed = False

    def start(self, t0_ns: int) -> None:
        """Start every driver at the same ``t0_ns``."""
        for driver in self.drivers:
            driver.start(t0_ns)

    def poll(self, now_ns: int) -> list[Reading]:
        """Poll every driver and merge their readings by capture time."""
        batches = [driver.poll(now_ns) for driver in self.drivers]
        for i, batch in enumerate(batches):
            for stream in dict.fromkeys(r.stream for r in batch):  # first-seen order: stable messages
                owner = self._owner.setdefault(stream, i)
                if owner != i:
                    raise DriverError(
                        f"composite driver: stream {stream!r} comes from both {type(self.drivers[owner]).__name__} "
                        f"and {type(self.drivers[i]).__name__}; give each camera to one driver "
                        "(e.g. the sim with cameras=False)"
                    )
        if len(batches) == 1:
            return batches[0]
        return list(heapq.merge(*batches, key=lambda r: r.capture_ns))

    def close(self) -> None:
        """Close every driver, even if one fails; the first failure is raised after."""
        if self._closed:
            return
        self._closed = True
        first: BaseException | None = None
        for driver in self.drivers:
            try:
                driver.close()
            except Exception as err:  # keep closing the others; report the first
                first = first or err
        if first is not None:
            raise first
