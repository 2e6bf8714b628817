"""What turns an event table into sequences: :class:`EventOptions` and the categorical :class:`Vocabulary`.

One item per entity (``per="entity"``: the entity's last window, labelled by the entity's label) or per event
(``per="event"``: the event and the window of events before it, labelled by the event's label). Rows are
grouped by ``group_by`` and ordered by ``order_by`` within the group; each step of an item is the ``fields``
(numbers) followed by the ``categorical`` columns as ids from the vocabulary (0: missing, 1: unseen, 2...: the
vocabulary's values). The window is the last ``window`` events, or the events within ``span`` (seconds for
timestamp order columns, the column's own units for numeric ones) of the last one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from ..errors import ConfigError

MISSING_ID = 0
UNSEEN_ID = 1
FIRST_ID = 2
DEFAULT_WINDOW = 64
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


@dataclass(frozen=True)
class EventOptions:
    group_by: str
    order_by: str
    fields: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    window: int | None = DEFAULT_WINDOW  # last N events (None: a time span)
    span: float | None = None  # the events within this much of the item's last event
    per: Literal["entity", "event"] = "entity"
    vocabulary: str | None = None  # JSON file {column: [values...]}; needed with categorical columns

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys([self.group_by, self.order_by, *self.fields, *self.categorical]))

    @property
    def width(self) -> int:
        """Values per step (the backbone's item shape is ``[None, width]``)."""
        return len(self.fields) + len(self.categorical)


def parse_window(text: str | int, option: str = "--window") -> tuple[int | None, float | None]:
    """``64`` -> (64, None): the last 64 events; ``30d``/``12h``/``90m``/``45s``/``2w`` -> (None, seconds);
    ``span:2.5`` -> (None, 2.5) in the order column's units. A value <= 0 is a :class:`ConfigError`."""
    raw = str(text).strip().lower()
    hint = f"pass {option} N (the last N events, N >= 1) or a span like 30d, 12h, 90m, 45s (or span:X)"
    if re.fullmatch(r"[+-]?\d+", raw):
        n = int(raw)
        if n <= 0:
            raise ConfigError(f"{option} {text}: a window must hold at least one event", hint=hint)
        return n, None
    match = re.fullmatch(r"([+-]?\d+(?:\.\d*)?)\s*([smhdw])", raw) or re.fullmatch(r"span:\s*([+-]?[\d.eE+-]+)()", raw)
    if not match:
        raise ConfigError(f"{option} '{text}' is neither a number of events nor a time span", hint=hint)
    try:
        value = float(match.group(1)) * _UNITS.get(match.group(2), 1.0)
    except ValueError:
        raise ConfigError(f"{option} '{text}' is neither a number of events nor a time span", hint=hint) from None
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"{option} {text}: a time span must be positive", hint=hint)
    return None, value


def _names(value: str | Sequence[str] | None, option: str) -> tuple[str, ...]:
    if value is None:
        return ()
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    if any(not n for n in names):
        raise ConfigError(f"{option} '{value}' has an empty column name", hint=f"pass {option} a,b,c")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{option} names {', '.join(twice)} more than once", hint="name each column once")
    return tuple(names)


def event_options(group_by: str | None = None, order_by: str | None = None, fields: Any = None,
                  categorical: Any = None, window: str | int | None = None, per: str | None = None,
                  vocabulary: str | None = None, need_vocabulary: bool = True) -> EventOptions | None:
    """Check and combine the event options (None when none is given). Every mistake that needs no data is
    a :class:`ConfigError` here, before any file is opened. ``need_vocabulary=False``: categoricals without a
    vocabulary are allowed (``pretrain`` builds one)."""
    given = {"--order-by": order_by, "--fields": fields, "--categorical": categorical, "--window": window,
             "--per": per, "--vocabulary": vocabulary}
    if group_by is None:
        used = [k for k, v in given.items() if v not in (None, (), "")]
        if used:
            raise ConfigError(f"{', '.join(used)} {'needs' if len(used) == 1 else 'need'} --group-by",
                              hint="pass --group-by ENTITY_COLUMN (e.g. account_id) to read events as sequences")
        return None
    if not order_by:
        raise ConfigError("--group-by needs --order-by", hint="pass --order-by with the timestamp (or sequence) column")
    nums, cats = _names(fields, "--fields"), _names(categorical, "--categorical")
    if not nums and not cats:
        raise ConfigError("--group-by needs the columns of each event", hint="pass --fields a,b and/or --categorical c,d")
    both = sorted(set(nums) & set(cats))
    if both:
        raise ConfigError(f"column(s) {', '.join(both)} given as both --fields and --categorical",
                          hint="a column is either numeric (--fields) or categorical (--categorical)")
    if group_by in nums or group_by in cats:
        raise ConfigError(f"the group column '{group_by}' cannot also be an event field",
                          hint="drop it from --fields/--categorical")
    if per not in (None, "entity", "event"):
        raise ConfigError(f"--per '{per}' is not entity or event", hint="pass --per entity or --per event")
    if cats and not vocabulary and need_vocabulary:
        raise ConfigError(f"categorical columns ({', '.join(cats)}) need a vocabulary",
                          hint="pass --vocabulary FILE (a pretrained backbone folder holds vocabulary.json; "
                               "make one with headstart.sequences.build_vocabulary)")
    if vocabulary and not cats:
        raise ConfigError("--vocabulary is given but no --categorical column", hint="pass --categorical c,d")
    n, span = parse_window(window) if window is not None else (DEFAULT_WINDOW, None)
    return EventOptions(group_by, order_by, nums, cats, n, span, per or "entity", vocabulary)


@dataclass(frozen=True)
class Vocabulary:
    """Categorical values -> ids per column: 0 missing, 1 unseen, 2... the listed values in order."""

    values: dict[str, tuple[str, ...]]

    def ids(self, column: str) -> dict[str, int]:
        return {v: FIRST_ID + i for i, v in enumerate(self.values[column])}

    def to_json(self) -> dict[str, Any]:
        return {"format": "headstart-vocabulary", "missing_id": MISSING_ID, "unseen_id": UNSEEN_ID,
                "columns": {c: list(v) for c, v in self.values.items()}}

    def save(self, path: str | Path) -> Path:
        from ..store.atomic import write_json_atomic

        write_json_atomic(Path(path), self.to_json())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, columns: Sequence[str] = ()) -> "Vocabulary":
        """Read a vocabulary file; every column in ``columns`` must be in it."""
        hint = "pass the vocabulary.json of the backbone's folder (headstart pretrain writes it)"
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read vocabulary {path}: {exc}", hint=hint) from None
        cols = data.get("columns") if isinstance(data, dict) else None
        if not isinstance(cols, dict) or not all(isinstance(v, list) for v in cols.values()):
            raise ConfigError(f"{path} is not a headstart vocabulary (no 'columns' object of lists)", hint=hint)
        missing = [c for c in columns if c not in cols]
        if missing:
            raise ConfigError(f"vocabulary {path} has no values for {', '.join(missing)} (it has "
                              f"{', '.join(cols) or 'none'})", hint=hint)
        return cls({c: tuple(str(v) for v in vals) for c, vals in cols.items()})


def build_vocabulary(path: str | Path, columns: Sequence[str], *, max_values: int = 10_000) -> Vocabulary:
    """The vocabulary of ``columns`` of an event table (CSV/JSONL/Parquet), streamed column by column: values by
    descending count (ties by value), at most ``max_values`` per column (the rest map to the unseen id)."""
    from collections import Counter

    from .tables import record_batches

    counts = {c: Counter() for c in columns}
    for batch in record_batches(str(path), list(columns)):
        for c in columns:
            counts[c].update(str(v) for v in batch.column(c).to_pylist() if v is not None)
    return Vocabulary({c: tuple(v for v, _ in sorted(counts[c].items(), key=lambda kv: (-kv[1], kv[0]))[:max_values])
                       for c in columns})
