"""Canonical JSON for protocol records, to compare decoded vectors with expectations."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from pipeline import protocol


def record_to_json(record: protocol.Record) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(record).__name__, "opcode": int(record.opcode)}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, protocol.DataHeader):
            value = dataclasses.asdict(value)
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[f.name] = value
    return out
