"""Open a data source with the reader plugin that claims it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError, HeadstartError, PluginError, ReaderError
from .items import ReaderOptions, ReaderSpec, Source


def open_source(source: str | os.PathLike, options: ReaderOptions | None = None, *, reader: str | None = None,
                engine: Any = None) -> Source:
    """Open ``source`` (path or prefixed ref) with a registered reader; its schema is checked now.

    The reader is ``reader`` (a name or alias) when given, else ``options.reader``; otherwise a reader whose prefix
    matches wins, then one claiming the extension or passing ``can_read``, the highest
    ``priority`` first (ties by name). Raises :class:`ConfigError` when the path does not exist
    or no reader accepts it, :class:`ReaderError` when it cannot be read, and the reader's
    :class:`~headstart.engine.errors.SchemaError` when columns or labels are wrong.
    """
    ref = os.fspath(source)
    options = options or ReaderOptions()
    entry = choose_reader(ref, options, reader=reader, engine=engine)
    try:
        return entry.spec.open(ref, options)
    except HeadstartError:
        raise
    except OSError as exc:
        raise ReaderError(f"cannot read '{ref}' with reader '{entry.name}': {exc.strerror or exc}",
                          hint="check the path exists and is readable") from exc
    except Exception as exc:  # noqa: BLE001 - a reader plugin's own bug: name it
        raise PluginError(f"reader '{entry.name}' (plugin '{entry.plugin}') failed to open '{ref}': "
                          f"{type(exc).__name__}: {exc}", hint="report it to the plugin's authors") from exc


def choose_reader(source: str | os.PathLike, options: ReaderOptions | None = None, *, reader: str | None = None,
                  engine: Any = None) -> Any:
    """The catalog entry of the reader :func:`open_source` uses for ``source`` (see there for the rules)."""
    if engine is None:
        from ..plugins import get_engine

        engine = get_engine()
    catalog = engine.catalog
    ref = os.fspath(source)
    options = options or ReaderOptions()
    reader = reader if reader is not None else options.reader
    entries = catalog.items("reader")
    if reader is not None:
        return catalog.get("reader", reader)
    prefixed = [e for e in entries if any(ref.startswith(p) for p in e.spec.prefixes)]
    if not prefixed and not os.path.exists(ref):
        raise ConfigError(f"source '{ref}' does not exist",
                          hint=f"check the path; readers: {describe_readers(entries)}")
    claimed = prefixed or [e for e in entries if _claims(e.spec, ref)]
    if not claimed:
        raise ConfigError(f"no reader accepts '{ref}'",
                          hint=f"readers: {describe_readers(entries)}; or choose one with --reader")
    return sorted(claimed, key=lambda e: (-e.spec.priority, e.name))[0]


def _claims(spec: ReaderSpec, ref: str) -> bool:
    try:
        return spec.claims(ref)
    except Exception:  # noqa: BLE001 - a broken can_read must not hide the other readers
        return False


def describe_readers(entries: list[Any]) -> str:
    """``name (what it accepts)`` for each reader, for error messages."""
    parts = []
    for e in entries:
        accepts = [*e.spec.prefixes, *e.spec.extensions] or ["see its description"]
        parts.append(f"{e.name} ({', '.join(accepts)}: {e.spec.description})" if e.spec.description
                     else f"{e.name} ({', '.join(accepts)})")
    return "; ".join(parts) or "none registered"


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` names after following symlinks; ``None`` when it does not exist."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def refuse_output_over_inputs(output: str | os.PathLike, inputs: Iterable[Any], *, option: str = "-o") -> None:
    """:class:`ConfigError` when writing ``output`` would replace or delete one of ``inputs``.

    Refused: ``output`` is the same file as an input (compared by device and inode, so symlinks and hard
    links count), or an input lies inside ``output`` when that is an existing folder (a model folder is
    replaced as a unit). Inputs that are not paths on disk (prefixed refs, arrays) are ignored.
    """
    out_id = _identity(output)
    if out_id is None:
        return
    for source in inputs:
        if not isinstance(source, (str, os.PathLike)) or _identity(source) is None:
            continue
        if _identity(source) == out_id:
            raise ConfigError(f"{option} {os.fspath(output)} is the input {os.fspath(source)} (the same file); "
                              "writing it would replace the input",
                              hint=f"write {option} to another path")
        for parent in Path(os.path.realpath(source)).parents:
            if _identity(parent) == out_id:
                raise ConfigError(f"the input {os.fspath(source)} lies inside the output folder {os.fspath(output)}; "
                                  "writing the output would delete it",
                                  hint=f"move the input out of that folder or write {option} elsewhere")
