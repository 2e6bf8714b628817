"""Folder-of-images reader: recursive, sorted, symlink-loop safe.

Layout: if the folder has sub-folders holding images, each first-level sub-folder is a
class and its name (NFC-normalised) is the label of every image below it; with no such
sub-folders the images are unlabelled. Images directly in the root next to class folders are
a :class:`SchemaError` (move them, or pass ``labelled=False`` to ignore the folder names).

Files are chosen by extension (``IMAGE_EXTENSIONS``, any case; hidden files skipped);
their content is checked later by the decoder. Entries are visited depth-first in the order of
their NFC-normalised names, so the order is the same on every file system whatever the
Unicode normalisation of the names. Symlinks are followed (``follow_symlinks``); a directory
already being visited (a loop) or already visited is skipped and counted in
``stats["symlink_loops"]`` / ``stats["skipped"]``. A file that cannot be read (permissions,
broken link, larger than ``max_bytes``) becomes a failed item naming its path. Files that are not images
by name are skipped, counted in ``stats["skipped"]``, and the first few are named with the reason in
``skipped_examples``; a folder with no image at all is a :class:`SchemaError` naming what it holds.
"""

from __future__ import annotations

import os
import unicodedata
from typing import Iterator

from headstart.sdk import Item, ReaderOptions, SchemaError

from ._common import display_path, new_stats

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp")
#: Files larger than this are failed items, never read into memory (override with ``extra["max_bytes"]``).
MAX_BYTES = 256 << 20
SKIPPED_EXAMPLES = 5  # skipped entries named in ``skipped_examples``


def _sort_key(name: str) -> tuple[str, str]:
    return unicodedata.normalize("NFC", name), name


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class FolderSource:
    """An opened folder of images; the layout (labelled or not) is decided in ``__init__``."""

    modality = "image"

    def __init__(self, path: str, options: ReaderOptions) -> None:
        self.root, self.options = path, options
        self.name = display_path(path)
        self.max_bytes = int(options.extra.get("max_bytes", MAX_BYTES))
        self.stats = self._new_stats()
        self.skipped_examples: list[str] = []
        if not os.path.isdir(path):
            raise SchemaError(f"{self.name} is not a folder", hint="pass a folder of images")
        top_files, class_dirs = self._top_level()
        if not top_files and not class_dirs:
            self._no_images()
        labelled = bool(class_dirs) if options.labelled is None else options.labelled
        if labelled and not class_dirs:
            raise SchemaError(f"{self.name} has no class sub-folders with images; labels were asked for",
                              hint="put each class's images in a sub-folder named after the class")
        if labelled and top_files:
            raise SchemaError(f"{self.name} mixes {len(top_files)} image(s) at the top level (e.g. "
                              f"{display_path(top_files[0])!r}) with class sub-folders "
                              f"({', '.join(display_path(d) for d in class_dirs[:5])})",
                              hint="move the top-level images into a class folder, or read it unlabelled "
                                   "(labelled=False)")
        self.has_labels = labelled
        self.classes = sorted({unicodedata.normalize("NFC", d) for d in class_dirs}) if labelled else []

    def _no_images(self) -> None:
        """:class:`SchemaError`: nothing under the folder is an image by name; say what was found instead."""
        stats = self._new_stats()
        examples: list[str] = []
        for _ in self._walk(self.root, {}, stats, examples=examples):
            pass
        found = (f"{stats['skipped']} other entr{'y' if stats['skipped'] == 1 else 'ies'} skipped: "
                 + "; ".join(examples)) if stats["skipped"] else "it is empty"
        raise SchemaError(f"{self.name} holds no image files ({found})",
                          hint="images are chosen by extension (" + " ".join(IMAGE_EXTENSIONS)
                               + "); for a table or text file pass its path, or choose a reader with --reader")

    def _new_stats(self) -> dict[str, int]:
        return {**new_stats(), "symlink_loops": 0}

    def _top_level(self) -> tuple[list[str], list[str]]:
        """(image files directly in the root, sub-folders that hold at least one image)."""
        files, dirs = [], []
        for entry in sorted(os.scandir(self.root), key=lambda e: _sort_key(e.name)):
            if entry.name.startswith("."):
                continue
            if self._is_dir(entry):
                if next(self._walk(entry.path, {}, self._new_stats()), None) is not None:
                    dirs.append(entry.name)
            elif is_image_name(entry.name):
                files.append(entry.name)
        return files, dirs

    def _is_dir(self, entry: os.DirEntry) -> bool:
        try:
            return entry.is_dir(follow_symlinks=self.options.follow_symlinks)
        except OSError:
            return False

    def _walk(self, path: str, visited: dict[tuple[int, int], bool], stats: dict[str, int],
              ancestors: frozenset[tuple[int, int]] = frozenset(), examples: list[str] | None = None) -> Iterator[str]:
        """Image file paths under ``path``, depth-first in name order; each real directory once.

        Skipped entries are counted in ``stats["skipped"]``; the first few are described in ``examples``."""

        def skip(where: str, why: str) -> None:
            stats["skipped"] += 1
            if examples is not None and len(examples) < SKIPPED_EXAMPLES:
                examples.append(f"{display_path(where)} ({why})")

        try:
            st = os.stat(path)
        except OSError as exc:
            skip(path, f"cannot be opened: {exc.strerror or exc}")
            return
        ident = (st.st_dev, st.st_ino)
        if ident in ancestors:
            stats["symlink_loops"] += 1
            return
        if ident in visited:
            skip(path, "a folder already visited through another link")
            return
        visited[ident] = True
        try:
            entries = sorted(os.scandir(path), key=lambda e: _sort_key(e.name))
        except OSError as exc:
            skip(path, f"cannot be listed: {exc.strerror or exc}")
            return
        inner = ancestors | {ident}
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if self._is_dir(entry):
                yield from self._walk(entry.path, visited, stats, inner, examples)
            elif is_image_name(entry.name):
                yield entry.path
            else:
                skip(entry.path, "not an image by its extension")

    def _labelled_paths(self, stats: dict[str, int],
                        examples: list[str] | None = None) -> Iterator[tuple[str, str | None]]:
        visited: dict[tuple[int, int], bool] = {}
        if not self.has_labels:
            for path in self._walk(self.root, visited, stats, examples=examples):
                yield path, None
            return
        root = os.stat(self.root)
        _, class_dirs = self._top_level()
        for entry in sorted(os.scandir(self.root), key=lambda e: _sort_key(e.name)):
            if entry.name.startswith(".") or entry.name in class_dirs:
                continue
            stats["skipped"] += 1
            if examples is not None and len(examples) < SKIPPED_EXAMPLES:
                why = "a folder with no image" if self._is_dir(entry) else "not an image by its extension"
                examples.append(f"{display_path(entry.path)} ({why})")
        for name in class_dirs:
            label = unicodedata.normalize("NFC", name)
            for path in self._walk(os.path.join(self.root, name), visited, stats,
                                   frozenset({(root.st_dev, root.st_ino)}), examples):
                yield path, label

    def __iter__(self) -> Iterator[Item]:
        self.stats = stats = self._new_stats()
        self.skipped_examples = examples = []
        return self._items(self._labelled_paths(stats, examples), stats)

    def splits(self, rows: int) -> list[list[tuple[str, str | None]]]:
        """Lists of ``rows`` (path, label) each, for readers in other processes (:meth:`read_split`); the walk's
        skipped entries are counted in ``stats`` here, once."""
        self.stats = stats = self._new_stats()
        self.skipped_examples = examples = []
        out: list[list[tuple[str, str | None]]] = [[]]
        for entry in self._labelled_paths(stats, examples):
            if len(out[-1]) == rows:
                out.append([])
            out[-1].append(entry)
        return out if out[0] else []

    def read_split(self, split: list[tuple[str, str | None]]) -> Iterator[Item]:
        """The items of one part from :meth:`splits`."""
        self.stats = stats = self._new_stats()
        return self._items(iter(split), stats)

    def _items(self, paths: Iterator[tuple[str, str | None]], stats: dict[str, int]) -> Iterator[Item]:
        for path, label in paths:
            item = self._read(path, label)
            stats["items"] += 1
            stats["failed"] += item.error is not None
            yield item

    def _read(self, path: str, label: str | None) -> Item:
        ref = display_path(path)
        try:
            size = os.path.getsize(path)
            if size > self.max_bytes:
                return Item.failed(ref, f"{ref}: file is {size} bytes, above max_bytes {self.max_bytes}", "image",
                                   label=label)
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            return Item.failed(ref, f"{ref}: cannot read the file ({exc.strerror or exc})", "image", label=label)
        return Item.make(ref, data, "image", label=label)

    def estimate_count(self) -> int | None:
        return sum(1 for _ in self._labelled_paths(self._new_stats()))


def open_folder(source: str, options: ReaderOptions) -> FolderSource:
    return FolderSource(os.fspath(source), options)
