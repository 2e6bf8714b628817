"""Save and load fitted heads in safe formats.

* headstart heads (:class:`headstart.engine.heads.base.Head`) → ``head.safetensors`` + ``head.json``;
* scikit-learn estimators → ``head.skops``, loaded with a trusted-type list: only types from
  ``sklearn``, ``numpy`` and ``scipy`` (anything else needs ``trust=True``);
* anything else → ``head.pkl``, which is never opened unless ``trust=True``.

:func:`save_head` returns the format record (format, files with sha256) the model manifest
keeps; :func:`load_head` checks every file against it before reading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..errors import HeadError, IntegrityError, UntrustedModelError
from ..store.atomic import sha256_file, write_bytes_atomic
from .base import Head

TRUSTED_MODULES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")


def _is_sklearn(obj: Any) -> bool:
    """A scikit-learn estimator (or a subclass of its BaseEstimator): skops can store it."""
    if type(obj).__module__.startswith("sklearn."):
        return True
    from sklearn.base import BaseEstimator

    return isinstance(obj, BaseEstimator)


def save_head(head: Any, directory: str | Path) -> dict[str, Any]:
    """Write ``head`` into ``directory``; return ``{"format": ..., "files": {name: sha256}}``."""
    directory = Path(directory)
    files: dict[str, str] = {}
    if isinstance(head, Head):
        from safetensors.numpy import save

        arrays, meta = head._state()
        files["head.safetensors"] = write_bytes_atomic(directory / "head.safetensors",
                                                       save({k: v for k, v in arrays.items()}))
        files["head.json"] = write_bytes_atomic(directory / "head.json", json.dumps(meta, indent=2).encode())
        return {"format": "safetensors", "files": files}
    if _is_sklearn(head):
        import skops.io

        files["head.skops"] = write_bytes_atomic(directory / "head.skops", skops.io.dumps(head))
        return {"format": "skops", "files": files}
    import pickle

    files["head.pkl"] = write_bytes_atomic(directory / "head.pkl", pickle.dumps(head, protocol=5))
    return {"format": "pickle", "files": files}


def _verify(directory: Path, files: dict[str, str]) -> None:
    for name, digest in files.items():
        path = directory / name
        if Path(name).name != name or not path.is_file():
            raise IntegrityError(f"model file '{name}' is missing from {directory}",
                                 hint="the model folder is incomplete; copy it again or retrain")
        if sha256_file(path) != digest:
            raise IntegrityError(f"model file {path} does not match its manifest (edited or replaced)",
                                 hint="copy the model folder again or retrain")


def load_head(directory: str | Path, record: dict[str, Any], *, build: Callable[[], Any] | None = None,
              trust: bool = False) -> Any:
    """Load the head described by ``record`` (from :func:`save_head`).

    ``build()`` must return an unfitted estimator of the saved class (safetensors format).
    """
    directory = Path(directory)
    fmt, files = record.get("format"), dict(record.get("files", {}))
    if fmt == "pickle" and not trust:
        raise UntrustedModelError(f"the head in {directory} is a pickle, which can run arbitrary code when loaded",
                                  hint="load it only if you trust its source: trust=True / --trust-pickle")
    _verify(directory, files)
    if fmt == "safetensors":
        from safetensors.numpy import load_file

        if build is None:
            raise HeadError("loading a safetensors head needs its head plugin to rebuild the estimator")
        head = build()
        if not isinstance(head, Head):
            raise HeadError(f"the head plugin built {type(head).__name__}, not a headstart Head",
                            hint="the plugin that saved this model is not the one installed now")
        meta = json.loads((directory / "head.json").read_text())
        head._set_state(load_file(str(directory / "head.safetensors")), meta)
        return head
    if fmt == "skops":
        import skops.io

        data = (directory / "head.skops").read_bytes()
        untrusted = skops.io.get_untrusted_types(data=data)
        refused = [t for t in untrusted if not t.startswith(TRUSTED_MODULES)]
        if refused and not trust:
            raise UntrustedModelError(f"the head in {directory} uses types outside scikit-learn/numpy/scipy: "
                                      f"{', '.join(refused)}", hint="load it only if you trust its source: trust=True")
        return skops.io.loads(data, trusted=untrusted)
    if fmt == "pickle":
        import pickle

        return pickle.loads((directory / "head.pkl").read_bytes())
    raise HeadError(f"unknown head format {fmt!r} in {directory}", hint="the model was written by a newer headstart?")
