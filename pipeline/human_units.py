"""Durations, shares and indicator values as a person reads them, for the report and `refinery inspect`.

Never exponent notation, never ``1e-11``: ``12.3 s``, ``4.2 min``, ``<0.01%``,
``kept 1.0 of 5.0 s (20%)``.
"""

from __future__ import annotations

import math


def seconds_text(seconds: float) -> str:
    """A duration as a person reads it: ``0.4 s``, ``12.3 s``, ``4.2 min``, ``3.1 h``."""
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def percent_text(share: float) -> str:
    """A share in [0, 1] as a percentage with sensible rounding (no ``1e-11``)."""
    pct = share * 100
    if pct == 0:
        return "0%"
    if abs(pct) < 0.01:
        return "<0.01%"
    if abs(pct) < 1:
        return f"{pct:.2f}%"
    if abs(pct) < 10:
        return f"{pct:.1f}%"
    return f"{pct:.0f}%"


def kept_text(kept_s: float, raw_s: float) -> str:
    """``kept 1.0 of 5.0 s (20%)``: what cleaning kept of a recording."""
    if raw_s <= 0:
        return f"kept {kept_s:.1f} s (raw duration not recorded)"
    share = min(1.0, kept_s / raw_s)  # the aligned grid may overrun the last sample by a step
    if raw_s >= 120:
        return f"kept {seconds_text(kept_s)} of {seconds_text(raw_s)} ({percent_text(share)})"
    return f"kept {kept_s:.1f} of {raw_s:.1f} s ({percent_text(share)})"


def number_text(value: float) -> str:
    """A plain number rounded for reading, never in exponent notation."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    if size >= 0.01:
        return f"{value:.3g}"
    return "<0.01" if value > 0 else ">-0.01"


def value_text(value: float, unit: str) -> str:
    """An indicator value in human units: fractions as %, ms rounded, counts whole."""
    if unit in ("fraction", "fraction of range"):
        text = percent_text(value)
        return text + (" of range" if unit == "fraction of range" else "")
    if unit == "ms":
        return f"{value:.0f} ms" if abs(value) >= 10 else f"{value:.1f} ms" if abs(value) >= 0.05 else "<0.1 ms"
    if unit == "s":
        return f"{value:.1f} s"
    if unit in ("count", "steps"):
        return f"{value:,.0f}" + (" steps" if unit == "steps" else "")
    if unit == "rad":
        return f"{value:.3f} rad"
    return f"{number_text(value)} {unit}".strip()

