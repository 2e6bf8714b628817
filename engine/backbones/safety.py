"""Checks that run before onnxruntime loads a model: file hashes and external-data paths
(confined, regular files of bounded size: :mod:`headstart.engine.safepaths`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import IntegrityError, UnsafeModelError
from ..safepaths import confined_file
from ..store.atomic import sha256_file


def verify_files(folder: Path, files: dict[str, str]) -> None:
    """Each ``name -> sha256`` in ``files`` must be a regular file (no link) inside ``folder`` with that hash."""
    root = folder.resolve()
    for name, expected in files.items():
        path = folder / name
        if path.is_symlink():
            raise UnsafeModelError(f"{path} is a symbolic link; cached model files must be regular files",
                                   hint=f"delete {folder} and export again")
        _check_inside(root, name, folder)
        if not os.path.lexists(path):
            raise IntegrityError(f"cached model file {path} is missing", hint=f"delete {folder} and export again")
        kind = "onnx" if name.endswith(".onnx") else "manifest" if name.endswith(".json") else "external_data"
        confined_file(folder, name, kind=kind, what="cached model file")  # a regular file of bounded size
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"cached model file {path} does not match its manifest (sha256 {actual[:12]}..., "
                f"expected {expected[:12]}...): it was edited, truncated or replaced",
                hint=f"delete {folder} and run `headstart export` again (or pass force=True)")


def external_data_files(model_path: Path) -> list[str]:
    """Relative external-data locations ``model_path`` uses, refusing unsafe ones (absolute, ``..``, links).

    Parses the graph without loading any external data.
    """
    import onnx

    from ..errors import BackboneError

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - empty, truncated or not ONNX
        raise BackboneError(f"{model_path} is not a readable ONNX model ({type(exc).__name__}: {exc})".replace("\n", " "),
                            hint="pass the path of an ONNX graph saved with onnx.save or torch.onnx.export") from None
    folder = model_path.parent
    root = folder.resolve()
    found: list[str] = []
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        where = f"tensor '{tensor.name}' of {model_path}"
        if not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location[:3]:
            raise UnsafeModelError(f"{where} points at external data '{location}', an absolute or empty path",
                                   hint="re-save the model with external data next to it (a relative file name)")
        _check_inside(root, location, folder, where)
        step = folder
        for part in Path(location).parts:
            step = step / part
            if step.is_symlink():
                raise UnsafeModelError(f"{where} points at external data '{location}' through a symbolic link",
                                       hint="copy the data file next to the model instead of linking it")
        confined_file(folder, location, kind="external_data", what=f"external data of {where}")
        if location not in found:
            found.append(location)
    return found


def _check_inside(root: Path, name: str, folder: Path, where: str | None = None) -> None:
    parts = Path(name).parts
    target = (folder / name).resolve()
    if ".." in parts or (target != root and root not in target.parents):
        raise UnsafeModelError(f"{where or 'a model file'} points at '{name}', outside the model folder {folder}",
                               hint="keep external data files inside the model's folder; never load such a model")


def _tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)
