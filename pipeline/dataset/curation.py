"""Curation without rewrites: exclude episodes (and take them back) by key or by a condition.

An exclusion is a tombstone row in the index (``index/x-<commit>.parquet``):
loaders, exports and statistics skip the episode from then on; the data is
never touched, and :func:`include` undoes it.

Conditions (``--where``) are a small language, parsed here and turned into a
Parquet predicate, never evaluated as code::

    grade < "C"                      worse than C (grades compare by quality: A is best)
    robot_id == "g1-07" and length < 300
    task in ("fold towel", "wipe") and start_ns >= 1764460800000000000

Fields are index columns (``grade``, ``overall``, ``robot_id``, ``model``,
``task``, ``operator``, ``outcome``, ``length``, ``rate_hz``, ``start_ns``,
``split``, ``key``, ``raw_episode_id``, ``data_segment``); operators ``==``
``!=`` ``<`` ``<=`` ``>`` ``>=`` and ``in (...)``; clauses joined by ``and``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dataset.index import GRADES, SCHEMA
from pipeline.dataset.store import Dataset, DatasetLock
from pipeline.errors import DatasetError

TEXT_FIELDS = ("grade", "robot_id", "model", "task", "operator", "outcome", "split", "key", "raw_episode_id",
               "data_segment")
NUMBER_FIELDS = ("overall", "length", "rate_hz", "start_ns")
_CLAUSE = re.compile(
    r"""\s*(?P<field>[a-z_]+)\s*(?P<op>==|!=|<=|>=|<|>|=|\bin\b)\s*"""
    r"""(?P<value>\((?:[^()"']|"[^"]*"|'[^']*')*\)|"[^"]*"|'[^']*'|[-+\w.]+)\s*(?:\band\b|$)""",
)
_ITEM = re.compile(r"""\s*("[^"]*"|'[^']*'|[-+\w.]+)\s*(?:,|$)""")
_MAX_CONDITION = 4096


def parse_where(condition: str) -> pc.Expression:
    """A ``--where`` condition as a Parquet predicate.

    Raises:
        DatasetError: The condition does not parse; the message shows where.
    """
    if len(condition) > _MAX_CONDITION:
        raise DatasetError("--where", f"condition longer than {_MAX_CONDITION} characters")
    expression: pc.Expression | None = None
    position = 0
    text = condition.strip()
    while position < len(text):
        match = _CLAUSE.match(text, position)
        if match is None:
            raise DatasetError("--where", f"cannot read the condition at {text[position:position + 40]!r}; "
                               'write clauses like grade < "C" and robot_id == "g1-07", joined by "and"')
        clause = _clause(match["field"], match["op"], match["value"])
        expression = clause if expression is None else expression & clause
        position = match.end()
    if expression is None:
        raise DatasetError("--where", "empty condition")
    return expression


def _clause(field: str, op: str, raw_value: str) -> pc.Expression:
    if field not in TEXT_FIELDS and field not in NUMBER_FIELDS:
        raise DatasetError("--where", f"unknown field {field!r}; fields: {', '.join(TEXT_FIELDS + NUMBER_FIELDS)}")
    if op == "in":
        inner = raw_value.strip()
        if not (inner.startswith("(") and inner.endswith(")")):
            raise DatasetError("--where", f"{field} in needs a list in parentheses, got {raw_value!r}")
        items = [m[1] for m in _ITEM.finditer(inner[1:-1]) if m[1]]
        return pc.field(field).isin([_value(field, item) for item in items])
    value = _value(field, raw_value)
    if field == "grade" and op in ("<", "<=", ">", ">="):
        return _grade_clause(op, str(value))
    column = pc.field(field)
    return {
        "==": column == value, "=": column == value, "!=": column != value,
        "<": column < value, "<=": column <= value, ">": column > value, ">=": column >= value,
    }[op]


def _value(field: str, raw: str) -> str | float | int:
    quoted = raw[:1] in "\"'" and raw[-1:] == raw[:1] and len(raw) >= 2
    if field in TEXT_FIELDS:
        if not quoted:
            raise DatasetError("--where", f"{field} is text: quote the value ({field} == \"{raw}\")")
        return raw[1:-1]
    if quoted:
        raise DatasetError("--where", f"{field} is a number: write it without quotes")
    try:
        number = float(raw)
    except ValueError as err:
        raise DatasetError("--where", f"{raw!r} is not a number for {field}") from err
    if pa.types.is_integer(SCHEMA.field(field).type):
        if not number.is_integer():
            raise DatasetError("--where", f"{field} is a whole number, got {raw}")
        return int(number)
    return number


def _grade_clause(op: str, grade: str) -> pc.Expression:
    if grade not in GRADES:
        raise DatasetError("--where", f"{grade!r} is not a grade; grades: {', '.join(GRADES)}")
    rank = GRADES.index(grade)  # 0 is the best
    # "grade < C" reads "worse than C": a larger rank.
    keep = {
        "<": GRADES[rank + 1 :], "<=": GRADES[rank:], ">": GRADES[:rank], ">=": GRADES[: rank + 1],
    }[op]
    return pc.field("grade").isin(list(keep))


def _targets(dataset: Dataset, keys: Sequence[str], where: str | None) -> list[int]:
    if bool(keys) == bool(where):
        raise DatasetError(str(dataset.path), "name episodes with --episode KEY or give --where CONDITION (one of the two)")
    if keys:
        table = dataset.index.table(["key"], pc.field("key").isin(list(keys)))
        found = set(table["key"].to_pylist())
        missing = [k for k in keys if k not in found]
        if missing:
            raise DatasetError(str(dataset.path), f"no episode with key {missing[0]!r}; `refinery inspect` lists them")
        return table["entry_id"].to_pylist()
    expression = parse_where(str(where)) & (pc.field("key") != "")
    return dataset.index.table(["key"], expression)["entry_id"].to_pylist()


def exclude(path: Path, *, keys: Sequence[str] = (), where: str | None = None, reason: str) -> int:
    """Exclude episodes from loaders, exports and statistics; returns how many were excluded now."""
    if not reason.strip():
        raise DatasetError(str(path), "say why with --reason (it is kept with the exclusion)")
    dataset = Dataset(path)
    with DatasetLock(dataset.path):
        return dataset.index.curate(_targets(dataset, keys, where), excluded=True, reason=reason)


def include(path: Path, *, keys: Sequence[str] = (), where: str | None = None, reason: str = "included again") -> int:
    """Undo exclusions; returns how many episodes came back."""
    dataset = Dataset(path)
    with DatasetLock(dataset.path):
        return dataset.index.curate(_targets(dataset, keys, where), excluded=False, reason=reason)
