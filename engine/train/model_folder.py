"""A model folder changes as a unit: written complete in a sibling folder, then swapped in.

:func:`check_target` runs before any work: ``train -o`` may replace a headstart model folder (or
fill an empty or new one), never a file or a folder holding something else. :func:`write_model_folder`
writes every file into a sibling temp folder (``.<name>.tmp-<pid>-<random>``), fsyncs, then swaps
it in with one ``renameat2(RENAME_EXCHANGE)`` (Linux), so a reader (or a process killed at any
point) sees the complete old folder or the complete new one, never a mix; the old folder is
removed afterwards. Where the filesystem cannot exchange, the old folder is renamed aside first
(a kill in that instant leaves it under its temp name) — the only non-atomic window.
Every step goes through :data:`OPS` so tests can kill the writer at each one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from ..store.atomic import TMP_MARK, fsync_dir, temp_path_for

MODEL_FORMAT = "headstart-model"
_RENAME_EXCHANGE = 2


class _FolderOps:
    """The folder-level filesystem calls of a model save; tests swap in a faulty one."""

    def exchange(self, a: Path, b: Path) -> None:
        """Atomically swap two paths (Linux ``renameat2``); OSError(EINVAL/ENOSYS) where unsupported."""
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "renameat2", None)
        if fn is None:
            raise OSError(errno.ENOSYS, "renameat2 is not available")
        at_fdcwd = -100
        if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(a))

    def rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def rmtree(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)


OPS = _FolderOps()


def is_model_folder(path: Path) -> bool:
    """``path`` holds a headstart model manifest."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == MODEL_FORMAT


def check_target(path: str | os.PathLike[str], *, allow_checkpoint: bool = False) -> Path:
    """Refuse an output that is a file, or a non-empty folder that is not a headstart model
    (``allow_checkpoint``: also accept a folder holding only an unfinished fine-tuning run)."""
    path = Path(path)
    hint = "choose a new folder name, or delete the folder yourself if you mean to replace it"
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ConfigError(f"the output {path} is a file, not a model folder", hint=hint)
    if not path.exists():
        if path.parent.exists() and not path.parent.is_dir():
            raise ConfigError(f"the output {path} lies under {path.parent}, which is a file", hint=hint)
        return path
    try:
        entries = {entry.name for entry in path.iterdir()}
    except OSError as exc:
        raise ConfigError(f"cannot read the output folder {path}: {exc.strerror}", hint=hint) from None
    if not entries or is_model_folder(path):
        return path
    if allow_checkpoint and entries <= {"checkpoint", "backbone"} and "checkpoint" in entries:
        return path
    shown = ", ".join(sorted(entries)[:5]) + (" ..." if len(entries) > 5 else "")
    raise ConfigError(f"the output folder {path} is not empty and is not a headstart model (it holds {shown})",
                      hint=hint)


def _clean_stale(path: Path) -> None:
    """Remove sibling temp folders of this output left by killed writers (their pid is gone)."""
    probe = temp_path_for(path).name
    prefix = probe[: probe.index(TMP_MARK) + len(TMP_MARK)]
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        if not sibling.name.startswith(prefix) or not sibling.is_dir():
            continue
        pid = sibling.name[len(prefix):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            OPS.rmtree(sibling)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _fsync_tree(root: Path) -> None:
    for folder, _, _ in os.walk(root):
        fsync_dir(folder)


def write_model_folder(path: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Call ``fill(staging)`` to write every file, then swap the staging folder in at ``path``."""
    path = Path(path)
    check_target(path, allow_checkpoint=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(path)
    staging = temp_path_for(path)
    staging.mkdir()
    try:
        fill(staging)
        _fsync_tree(staging)
    except BaseException:
        OPS.rmtree(staging)
        raise
    if not os.path.lexists(path):
        OPS.rename(staging, path)
    else:
        try:
            OPS.exchange(staging, path)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
                OPS.rmtree(staging)
                raise
            aside = temp_path_for(path)
            OPS.rename(path, aside)
            OPS.rename(staging, path)
            staging = aside
        fsync_dir(path.parent)
        OPS.rmtree(staging)  # now the old folder
    fsync_dir(path.parent)
    return path
