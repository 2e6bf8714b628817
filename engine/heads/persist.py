"""Save and load fitted heads in safe formats.

* headstart heads (:class:`headstart.engine.heads.base.Head`) → ``head.safetensors`` + ``head.json``;
* scikit-learn estimators → ``head.skops``, loaded with an exact trusted-type list
  (:mod:`headstart.engine.heads.trusted`); any other type needs ``trust=True``;
* anything else → ``head.pkl``, which is never opened unless ``trust=True``.

:func:`save_head` returns the format record (format, files with sha256) the model manifest
keeps; :func:`load_head` checks every file against it (inside the folder, a regular file of
bounded size, the recorded sha256) before reading, and turns a damaged file into a
:class:`HeadError` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..errors import HeadError, HeadstartError, IntegrityError, UntrustedModelError
from ..safepaths import confined_file, read_confined
from ..store.atomic import sha256_file, write_bytes_atomic
from .base import Head

FORMAT_FILES = {"safetensors": ("head.safetensors", "head.json"), "skops": ("head.skops",), "pickle": ("head.pkl",)}
TRUST_HINT = "load it only if you trust its source: --trust-pickle on the command line, trust=True in Python"


def _is_sklearn(obj: Any) -> bool:
    """A scikit-learn estimator (or a subclass of its BaseEstimator): skops can store it."""
    if type(obj).__module__.startswith("sklearn."):
        return True
    from sklearn.base import BaseEstimator

    return isinstance(obj, BaseEstimator)


def safe_format(head: Any) -> str | None:
    """The safe format ``head`` saves as (``safetensors`` or ``skops``), or ``None`` when only pickle would do."""
    if isinstance(head, Head):
        return "safetensors" if type(head).has_safe_state() else None
    return "skops" if _is_sklearn(head) else None


def no_safe_format_error(head: Any, name: str | None = None) -> HeadError:
    """The error for a head that only pickle could save, with the fix."""
    what = f"head '{name}' ({type(head).__name__})" if name else type(head).__name__
    fix = ("implement _state() and _set_state() (see docs/plugins.md, 'A head')" if isinstance(head, Head)
           else "subclass headstart.sdk.Head and implement _state()/_set_state() (see docs/plugins.md, 'A head')")
    return HeadError(f"{what} has no safe saved form: only pickle could save it, and a pickle runs code when loaded",
                     hint=f"{fix}; or save it as pickle deliberately with --allow-pickle (allow_pickle=True), "
                          "which makes loading it need --trust-pickle")


def save_head(head: Any, directory: str | Path, *, allow_pickle: bool = False) -> dict[str, Any]:
    """Write ``head`` into ``directory``; return ``{"format": ..., "files": {name: sha256}}``.

    A head with no safe format is refused (:func:`no_safe_format_error`) unless ``allow_pickle``."""
    directory = Path(directory)
    files: dict[str, str] = {}
    fmt = safe_format(head)
    if fmt == "safetensors":
        from safetensors.numpy import save

        arrays, meta = head.saved_state()
        files["head.safetensors"] = write_bytes_atomic(directory / "head.safetensors",
                                                       save({k: v for k, v in arrays.items()}))
        files["head.json"] = write_bytes_atomic(directory / "head.json", json.dumps(meta, indent=2).encode())
        return {"format": "safetensors", "files": files}
    if fmt == "skops":
        import skops.io

        files["head.skops"] = write_bytes_atomic(directory / "head.skops", skops.io.dumps(head))
        return {"format": "skops", "files": files}
    if not allow_pickle:
        raise no_safe_format_error(head)
    import pickle

    files["head.pkl"] = write_bytes_atomic(directory / "head.pkl", pickle.dumps(head, protocol=5))
    return {"format": "pickle", "files": files}


def _verify(directory: Path, fmt: str, files: Any) -> None:
    """The format's files are all recorded, confined to ``directory`` and match their sha256."""
    manifest = directory / "manifest.json"
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise IntegrityError(f"{manifest}: head.files must map file names to sha256 digests",
                             hint="the manifest is damaged or hand-edited; copy the model folder again or retrain")
    missing = [name for name in FORMAT_FILES[fmt] if name not in files]
    if missing:
        raise IntegrityError(f"{manifest}: head.files does not record {', '.join(missing)} for a {fmt} head",
                             hint="the manifest is damaged or hand-edited; copy the model folder again or retrain")
    for name, digest in files.items():
        kind = "manifest" if name.endswith(".json") else "head"
        path = confined_file(directory, name, kind=kind, what="head file")
        if sha256_file(path) != digest:
            raise IntegrityError(f"model file {directory / name} does not match its manifest (edited or replaced)",
                                 hint="copy the model folder again or retrain")


def _template(build: Callable[[], Any] | None) -> Any:
    """An unfitted head of the manifest's class (widens the skops trust list to it), or None."""
    if build is None:
        return None
    try:
        return build()
    except Exception:  # noqa: BLE001 - parameters stored as text (nested estimators) may not rebuild
        return None


def untrusted_skops_types(path: str | Path, template: Any = None) -> list[str]:
    """The types in the skops file ``path`` that load without ``trust=True`` would refuse."""
    import skops.io

    from .trusted import refused_types

    return refused_types(skops.io.get_untrusted_types(file=str(path)), template)


def load_head(directory: str | Path, record: dict[str, Any], *, build: Callable[[], Any] | None = None,
              trust: bool = False) -> Any:
    """Load the head described by ``record`` (from :func:`save_head`).

    ``build()`` must return an unfitted estimator of the saved class (safetensors format; for
    skops it names the head class the trusted-type list admits).
    """
    directory = Path(directory)
    if not isinstance(record, dict):
        raise IntegrityError(f"{directory / 'manifest.json'}: 'head' must be an object",
                             hint="the manifest is damaged or hand-edited; copy the model folder again or retrain")
    fmt, files = record.get("format"), record.get("files", {})
    if fmt not in FORMAT_FILES:
        raise HeadError(f"unknown head format {fmt!r} in {directory / 'manifest.json'}",
                        hint="the model was written by a newer headstart, or the manifest is damaged")
    if fmt == "pickle" and not trust:
        raise UntrustedModelError(f"the head in {directory} is a pickle, which can run arbitrary code when loaded",
                                  hint=TRUST_HINT)
    _verify(directory, fmt, files)
    try:
        if fmt == "safetensors":
            return _load_safetensors(directory, build)
        if fmt == "skops":
            return _load_skops(directory, build, trust)
        import pickle

        return pickle.loads(read_confined(directory, "head.pkl", kind="head"))
    except HeadstartError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file: name it, no traceback
        name = {"safetensors": "head.safetensors/head.json", "skops": "head.skops", "pickle": "head.pkl"}[fmt]
        raise HeadError(f"cannot load the head from {directory / name}: {type(exc).__name__}: {exc}",
                        hint="the file is damaged or was written by another version; copy the model folder "
                             "again or retrain") from None


def _load_safetensors(directory: Path, build: Callable[[], Any] | None) -> Head:
    from safetensors.numpy import load

    if build is None:
        raise HeadError("loading a safetensors head needs its head plugin to rebuild the estimator")
    head = build()
    if not isinstance(head, Head):
        raise HeadError(f"the head plugin built {type(head).__name__}, not a headstart Head",
                        hint="the plugin that saved this model is not the one installed now")
    try:
        meta = json.loads(read_confined(directory, "head.json", kind="manifest"))
    except ValueError as exc:
        raise HeadError(f"{directory / 'head.json'} is not valid JSON: {exc}",
                        hint="copy the model folder again or retrain") from None
    try:
        arrays = load(read_confined(directory, "head.safetensors", kind="head"))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise HeadError(f"{directory / 'head.safetensors'} is not a readable safetensors file: {exc}",
                        hint="copy the model folder again or retrain") from None
    try:
        head.restore_state(arrays, meta)
    except HeadstartError:
        raise
    except Exception as exc:  # noqa: BLE001 - arrays/metadata that do not fit the head
        raise HeadError(f"the head files in {directory} do not fit a {type(head).__name__}: "
                        f"{type(exc).__name__}: {exc}", hint="copy the model folder again or retrain") from None
    return head


def _load_skops(directory: Path, build: Callable[[], Any] | None, trust: bool) -> Any:
    import skops.io

    from .trusted import refused_types

    path = directory / "head.skops"
    data = read_confined(directory, "head.skops", kind="head")
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as exc:  # noqa: BLE001 - not a zip, no schema, unknown loader
        raise HeadError(f"{path} is not a readable skops file: {type(exc).__name__}: {exc}",
                        hint="copy the model folder again or retrain") from None
    refused = refused_types(untrusted, _template(build))
    if refused and not trust:
        raise UntrustedModelError(
            f"{path} holds types headstart does not trust (they could run code when loaded): {', '.join(refused)}",
            hint=f"inspect them with `python -c \"import skops.io; print(skops.io.get_untrusted_types("
                 f"file='{path}'))\"`; {TRUST_HINT}")
    return skops.io.loads(data, trusted=untrusted)
