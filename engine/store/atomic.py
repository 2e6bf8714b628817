"""Crash-safe file writes: temp file in the same directory → fsync → os.replace → fsync dir.

A reader sees the old file or the new one, never a torn one. Temp files are named
``.<name>.tmp-<pid>-<random>`` so :func:`clean_temp_files` can remove leftovers of a
killed writer. Every filesystem step goes through :data:`FS` so tests can inject a
failure at the N-th write, fsync or rename.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

TMP_MARK = ".tmp-"


class _FileSystem:
    """The few filesystem calls atomic writes make; tests swap in a faulty one."""

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def replace(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        os.replace(src, dst)


FS = _FileSystem()


#: errno values meaning "this platform or filesystem cannot fsync a directory" -- not a failed write.
#: Anything else (EIO, ENOSPC, EROFS, ...) means the rename may not be durable and is raised.
FSYNC_DIR_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}
                                  | ({errno.EACCES, errno.EISDIR} if os.name == "nt" else set()))  # Windows: no dir fds


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename inside it is durable.

    A no-op only where the platform or filesystem cannot fsync a directory (errno in
    :data:`FSYNC_DIR_UNSUPPORTED`); any other ``OSError`` is raised.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        if exc.errno in FSYNC_DIR_UNSUPPORTED:
            return
        raise
    try:
        FS.fsync(fd)
    except OSError as exc:
        if exc.errno not in FSYNC_DIR_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


NAME_MAX = 255  # bytes in one path component (ext4, xfs, btrfs, tmpfs)


def temp_path_for(path: Path) -> Path:
    """A sibling temp name for ``path``; a long name is shortened (and made unique by its hash) so the
    temp name stays within :data:`NAME_MAX` bytes whenever ``path``'s own name does."""
    suffix = f"{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    name = path.name
    if len(f".{name}{suffix}".encode()) > NAME_MAX:
        tag = "~" + hashlib.sha256(name.encode()).hexdigest()[:12]
        room = NAME_MAX - len(f".{tag}{suffix}".encode())
        name = name.encode()[:room].decode(errors="ignore") + tag
    return path.with_name(f".{name}{suffix}")


def write_bytes_atomic(path: str | os.PathLike[str], chunks: bytes | Iterable[bytes]) -> str:
    """Write ``chunks`` to ``path`` atomically; return the sha256 hex of what was written."""
    digest = hashlib.sha256()
    with _replacing(Path(path)) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for chunk in [chunks] if isinstance(chunks, (bytes, bytearray, memoryview)) else chunks:
                view = memoryview(chunk)
                digest.update(view)
                while view:
                    written = FS.write(fd, view)
                    view = view[written:]
            FS.fsync(fd)
        finally:
            os.close(fd)
    return digest.hexdigest()


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A sibling temp path for the caller to write (and fsync); then renamed over ``path`` and the folder
    fsynced. On any failure the temp file is removed and ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        FS.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> str:
    """Write ``data`` as indented JSON atomically; return its sha256."""
    return write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())


def copy_file_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Copy ``src`` to ``dst`` atomically; return the sha256 of the copy."""

    def chunks():
        with open(src, "rb") as fh:
            while block := fh.read(chunk_size):
                yield block

    return write_bytes_atomic(dst, chunks())


def write_patched_copy_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                              patches: Iterable[tuple[int, bytes]], durable: bool = True) -> None:
    """Write ``dst`` atomically: a copy of ``src`` with each ``(offset, data)`` of ``patches`` written over its bytes
    (inside the file). The kernel copies the file (``shutil.copyfile``: sendfile), so a large file is not read
    into memory and written back: for a 90 MB graph about 0.03 s against 0.1-0.3 s here.

    ``durable=False`` skips the fsync of the data (0.13 s of a 90 MB graph here) for a caller that fsyncs ``dst``
    itself (:func:`fsync_file`) before anything durable points at it: an export's manifest, say, which is what
    marks the folder complete."""
    import shutil

    with _replacing(Path(dst)) as tmp:
        shutil.copyfile(src, tmp)
        size = os.path.getsize(tmp)
        fd = os.open(tmp, os.O_WRONLY)
        try:
            for offset, data in patches:
                view = memoryview(data)
                if offset < 0 or offset + len(view) > size:
                    raise ValueError(f"patch of {len(view)} bytes at {offset} is outside {src} ({size} bytes)")
                while view:
                    written = FS.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
            if durable:
                FS.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush ``path``'s data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        FS.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def clean_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove temp files left by killed writers under ``directory``; return what was removed.

    Only call this while holding the directory's write lock, or a live writer's temp
    file could be removed under it.
    """
    removed = []
    root = Path(directory)
    if not root.exists():
        return removed
    for p in root.rglob(f".*{TMP_MARK}*"):
        try:
            if p.is_dir():
                import shutil

                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed
