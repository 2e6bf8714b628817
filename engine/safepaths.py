"""Paths named inside a model folder or an ``onnx:`` sidecar: confined, regular, bounded.

A manifest or sidecar is data someone else may have written. Every path it names goes through
:func:`confined_file` (or :func:`read_confined`, which also reads it):

* relative, without ``..`` components, and resolving (symbolic links followed) inside its folder;
* a regular file: not a FIFO (reading one blocks forever), a device (``/dev/zero`` never ends),
  a socket or a folder;
* no larger than the limit of its kind (:data:`SIZE_LIMITS`, documented in docs/trust.md).

Reads open the file with ``O_NONBLOCK | O_NOFOLLOW`` and check the *opened* file, so a file swapped
for a FIFO or a link after the check cannot block or escape either.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import UnsafeModelError

MiB = 1 << 20
GiB = 1 << 30

#: Largest accepted file per kind (bytes). A larger file is refused before it is read.
SIZE_LIMITS: dict[str, int] = {
    "manifest": 16 * MiB,         # manifest.json, metrics.json, head.json, checkpoint/sidecar metadata
    "sidecar": 1 * MiB,           # model.headstart.json next to an onnx: graph
    "head": 8 * GiB,              # head.safetensors | head.skops | head.pkl
    "training_keys": 2 * GiB,     # training_keys.npy (16 bytes per training item)
    "tokenizer": 256 * MiB,       # tokenizer.json
    "onnx": 16 * GiB,             # an ONNX graph (its weights may be external data)
    "external_data": 64 * GiB,    # one ONNX external-data file
    "backbone": 16 * GiB,         # fine-tuned backbone weights in a model folder
}


def _where(folder: Path, name: str, what: str | None) -> str:
    return f"{what or 'a file'} '{name}' named in {folder}"


def _size_error(path: Path, size: int, kind: str) -> UnsafeModelError:
    return UnsafeModelError(
        f"{path} is {size:,} bytes, over the {SIZE_LIMITS[kind]:,}-byte limit for a {kind.replace('_', ' ')} file",
        hint="this file cannot be what the manifest says it is; get the folder again from its source")


def confined_file(folder: str | os.PathLike[str], name: str, *, kind: str, what: str | None = None) -> Path:
    """``folder/name`` checked as the module docstring says; raise :class:`UnsafeModelError` otherwise."""
    folder = Path(folder)
    if kind not in SIZE_LIMITS:
        raise ValueError(f"unknown file kind {kind!r}")
    if not isinstance(name, str) or not name or "\x00" in name:
        raise UnsafeModelError(f"{_where(folder, str(name), what)} is not a usable file name",
                               hint="the manifest is damaged or hand-edited; get the folder again from its source")
    parts = Path(name).parts
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise UnsafeModelError(f"{_where(folder, name, what)} leaves the folder (absolute path or '..')",
                               hint="never load such a folder: files it names must lie inside it")
    root = folder.resolve()
    path = folder / name
    target = path.resolve()
    if target != root and root not in target.parents:
        raise UnsafeModelError(f"{_where(folder, name, what)} resolves to {target}, outside the folder "
                               "(a symbolic link points out)",
                               hint="never load such a folder: files it names must lie inside it")
    try:
        info = os.stat(target)
    except FileNotFoundError:
        raise UnsafeModelError(f"{_where(folder, name, what)} does not exist",
                               hint="the folder is incomplete; copy it again from its source") from None
    except OSError as exc:
        raise UnsafeModelError(f"cannot inspect {path}: {exc.strerror}",
                               hint="check the folder's permissions") from None
    if not stat.S_ISREG(info.st_mode):
        kind_name = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a folder" if stat.S_ISDIR(info.st_mode)
                     else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                     else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise UnsafeModelError(f"{_where(folder, name, what)} is {kind_name}, not a regular file",
                               hint="never load such a folder: files it names must be regular files")
    if info.st_size > SIZE_LIMITS[kind]:
        raise _size_error(path, info.st_size, kind)
    return target


def check_regular_file(path: str | os.PathLike[str], *, kind: str, what: str = "file") -> Path:
    """A path the user named directly (not confined to a folder): it must be a bounded regular file."""
    path = Path(path)
    return confined_file(path.parent, path.name, kind=kind, what=what)


def read_confined(folder: str | os.PathLike[str], name: str, *, kind: str, what: str | None = None) -> bytes:
    """The bytes of ``folder/name`` after :func:`confined_file`; the opened file is checked again."""
    target = confined_file(folder, name, kind=kind, what=what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags)
    except OSError as exc:
        raise UnsafeModelError(f"cannot open {target}: {exc.strerror}",
                               hint="the file changed while it was read, or is not readable") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeModelError(f"{target} is not a regular file", hint="never load such a folder")
        limit = SIZE_LIMITS[kind]
        if info.st_size > limit:
            raise _size_error(target, info.st_size, kind)
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:
                raise _size_error(target, total, kind)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
