"""What heads train and predict on: ``FeatureSet`` (aligned keys, refs, labels, vectors) and ``FeatureMatrix``.

A :class:`FeatureMatrix` is an (n, dim) matrix of float32 rows that is read chunk by chunk, so that a
head's memory does not grow with n: :class:`ArrayMatrix` wraps an array in memory, :class:`StoreMatrix`
names rows of a feature store (their ids) and reads them from the shards only while a chunk is used.
``FeatureSet.vectors`` is either an array or a ``FeatureMatrix`` (``FeatureSet.coerce`` of an
``EmbedResult`` gives a ``StoreMatrix``: nothing is loaded up front).

Heads that declare ``streams_features = True`` (``linear``, ``mlp``) fit on a matrix chunk by chunk;
every other estimator gets its training rows in memory, at most :data:`IN_MEMORY_BYTES` of them: above
that, a stratified subsample (:func:`fit_input`; its size is reported in the metrics and the model
manifest). Predictions are always made chunk by chunk (:func:`predict_in_chunks`).

A store matrix counts what it reads of the shards (:class:`ReadLog`, ``StoreMatrix.reads``, shared by its
subsets; ``train`` records it as ``training.reads``); :func:`check_finite` of store rows is the store's own
check of each shard (one read of each; it proves every vector finite), not a scan of the rows.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import DataError

#: bytes of float32 rows per chunk (32 MiB: 21,845 rows of 384-d vectors)
CHUNK_BYTES = 32 << 20
#: training rows an in-memory estimator (scikit-learn, knn) gets at most, as float32 bytes (512 MiB:
#: ~350,000 rows of 384-d vectors; scikit-learn often copies them to float64 on top)
IN_MEMORY_BYTES = 512 << 20


class FeatureMatrix:
    """(n, dim) float32 rows read chunk by chunk; ``np.asarray(m)`` materialises all of them."""

    dim: int
    chunk_rows: int | None = None  # rows per chunk; None: CHUNK_BYTES worth
    checked_finite: bool = False  # every row was found finite (check_finite); subsets inherit it

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.dim)

    @property
    def ndim(self) -> int:
        return 2

    def rows_per_chunk(self) -> int:
        return int(self.chunk_rows or max(1024, CHUNK_BYTES // (4 * max(self.dim, 1))))

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions, block) pairs covering every row once, in position order (0..n-1, ``rows_per_chunk`` at a
        time): ``block[i]`` is row ``positions[i]``. The blocks do not depend on where the rows are stored, so
        a sum over them (a loss, a gradient) is the same for every layout of the same vectors: a store written
        by Ray workers, by the local engine or compacted trains the same head, to the bit.
        """
        raise NotImplementedError

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as a new (len(rows), dim) float32 array."""
        raise NotImplementedError

    def subset(self, rows: np.ndarray) -> "FeatureMatrix":
        """The matrix of rows ``rows`` (lazy: nothing is read)."""
        raise NotImplementedError

    def sample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """Positions of a random sample of ``size`` rows (all rows when ``size`` >= n), sorted: rows drawn one
        by one here (in memory); a store matrix draws short contiguous runs (see :meth:`StoreMatrix.sample`)."""
        n = len(self)
        return np.sort(rng.choice(n, size=min(n, size), replace=False))

    def __getitem__(self, rows: Any) -> "FeatureMatrix":
        """The sub-matrix of ``rows`` (a slice, a boolean mask or row indices), lazily."""
        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise DataError(f"a boolean row mask of shape {rows.shape} for {len(self)} rows",
                                hint="pass one bool per row, or row indices")
            rows = np.flatnonzero(rows)
        return self.subset(rows.astype(np.int64, copy=False))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.take(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype, copy=False)

    def _inherit(self, child: "FeatureMatrix") -> "FeatureMatrix":
        child.chunk_rows, child.checked_finite = self.chunk_rows, self.checked_finite
        return child


class ArrayMatrix(FeatureMatrix):
    """An in-memory (n, dim) array; chunks are views (no copy)."""

    def __init__(self, array: Any, chunk_rows: int | None = None) -> None:
        self.array = np.asarray(array)
        if self.array.ndim != 2:
            raise DataError(f"features must be a 2-D array (n_items, dim), got shape {self.array.shape}")
        self.dim = int(self.array.shape[1])
        self.chunk_rows = chunk_rows

    def __len__(self) -> int:
        return len(self.array)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        step = self.rows_per_chunk()
        for start in range(0, len(self), step):
            stop = min(start + step, len(self))
            yield np.arange(start, stop), np.ascontiguousarray(self.array[start:stop], dtype=np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.array[np.asarray(rows, dtype=np.int64)], dtype=np.float32)

    def subset(self, rows: np.ndarray) -> "FeatureMatrix":
        return self._inherit(ArrayMatrix(self.array[np.asarray(rows, dtype=np.int64)]))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.array if dtype is None else self.array.astype(dtype, copy=False)


class ReadLog:
    """Bytes a :class:`StoreMatrix` (and every subset of it) read from the store's shard files: whole files
    its integrity checks hashed (``checked_bytes``, once per shard and process) and vector rows it copied
    (``row_bytes``). ``bytes_read / (rows × dim × 4)`` is the number of passes made over the data."""

    def __init__(self) -> None:
        self.checked_bytes = 0
        self.row_bytes = 0
        self.checked_shards = 0

    @property
    def bytes_read(self) -> int:
        return self.checked_bytes + self.row_bytes

    def as_dict(self) -> dict[str, int]:
        return {"bytes_read": self.bytes_read, "checked_bytes": self.checked_bytes, "row_bytes": self.row_bytes,
                "checked_shards": self.checked_shards}


class _ShardReader:
    """A store's vector shards as (entry, first row id), read through the store (``shard_vectors``: checked
    on first use in the process, memory-mapped, not kept), counting what is read in a :class:`ReadLog`."""

    def __init__(self, store: Any) -> None:
        self.store = store
        shards = store.vector_shards()
        self.entries = [entry for entry, _ in shards]
        self.starts = np.asarray([first for _, first in shards] + [len(store)], dtype=np.int64)
        self.log = ReadLog()

    def shard(self, s: int) -> np.ndarray:
        """Shard ``s``'s vectors (its integrity check, sha256 + finite + unit norm, runs on first use)."""
        from ..store import integrity

        before = integrity.hashed_shards
        array = self.store.shard_vectors(self.entries[s])
        if integrity.hashed_shards != before:
            self.log.checked_bytes += int(self.entries[s].get("bytes") or 0)
            self.log.checked_shards += 1
        return array

    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, ids, side="right") - 1

    def read(self, ids: np.ndarray, dim: int) -> np.ndarray:
        """Vectors of row ``ids`` in that order (rows of one shard copied together, in increasing row id, so
        each shard is read front to back whatever order the ids come in)."""
        out = np.empty((len(ids), dim), dtype=np.float32)
        if not len(ids):
            return out
        if int(ids.min()) < 0 or int(ids.max()) >= self.starts[-1]:
            from ..errors import StoreError

            raise StoreError(f"feature store {self.store.path} has {self.starts[-1]} vectors; row ids "
                             f"{int(ids.min())}..{int(ids.max())} were asked for",
                             hint="take row ids from FeatureStore.ids() on the same snapshot")
        order = np.argsort(ids, kind="stable")
        shard_of = self.shard_of(ids)
        bounds = np.searchsorted(shard_of[order], np.arange(len(self.entries) + 1))
        for s in np.flatnonzero(np.diff(bounds)):
            where = order[bounds[s]:bounds[s + 1]]
            out[where] = self.shard(int(s))[ids[where] - self.starts[s]]
        self.log.row_bytes += out.nbytes
        return out


class StoreMatrix(FeatureMatrix):
    """Rows of a feature store, by row id; read from its shards one chunk at a time.

    Holds the ids (8 bytes per row). Every read goes through the store's integrity check (a shard is hashed
    and its vectors checked finite on first use) and is counted in ``reads`` (a :class:`ReadLog` shared
    with every subset).
    """

    #: consecutive positions in each run that :meth:`sample` takes
    SAMPLE_RUN = 64

    def __init__(self, store: Any, ids: np.ndarray, chunk_rows: int | None = None,
                 reader: _ShardReader | None = None) -> None:
        self.store = store
        self.ids = np.asarray(ids, dtype=np.int64)
        self.dim = int(store.dim)
        self.chunk_rows = chunk_rows
        self._reader = reader

    @property
    def reader(self) -> _ShardReader:
        if self._reader is None:
            self._reader = _ShardReader(self.store)
        return self._reader

    @property
    def reads(self) -> ReadLog:
        return self.reader.log

    def __len__(self) -> int:
        return len(self.ids)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        step = self.rows_per_chunk()
        for start in range(0, len(self), step):
            positions = np.arange(start, min(start + step, len(self)))
            yield positions, self.reader.read(self.ids[positions], self.dim)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.reader.read(self.ids[np.asarray(rows, dtype=np.int64)], self.dim)

    def subset(self, rows: np.ndarray) -> "FeatureMatrix":
        return self._inherit(StoreMatrix(self.store, self.ids[np.asarray(rows, dtype=np.int64)],
                                         reader=self.reader))

    def verify_shards(self) -> bool:
        """Run the store's integrity check on every shard holding rows of this matrix (one read of each
        shard; :class:`~headstart.engine.errors.StoreDamagedError` on a damaged one). The check proves every
        vector of the shard finite, so no row need be read again for that; False when the store's checks
        are switched off (benchmarks only), and the rows must then be scanned."""
        from ..store import integrity

        if not integrity.CHECKS:
            return False
        reader = self.reader
        for s in np.unique(reader.shard_of(self.ids)):
            reader.shard(int(s))
        return True

    @staticmethod
    def checks_on_read() -> bool:
        """Whether every read of a shard's rows is preceded by the store's check of that shard (always, unless
        the checks are switched off for a benchmark)."""
        from ..store import integrity

        return bool(integrity.CHECKS)

    def sample(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """``size`` positions in random runs of :data:`SAMPLE_RUN` consecutive positions, sorted. The rows of a
        source are stored in its order, so a run is a short byte range of a shard: a sample of 200,000 rows
        reads ~3,000 of them instead of faulting in most pages of every shard, as single random rows over a
        store larger than the page cache do. Positions, not storage order, choose the runs, so the sample
        does not depend on the store's layout (see :meth:`chunks`)."""
        n = len(self)
        if size >= n:
            return super().sample(size, rng)
        run = self.SAMPLE_RUN
        blocks = -(-n // run)
        chosen = np.sort(rng.choice(blocks, size=min(blocks, -(-size // run)), replace=False))
        spans = (chosen[:, None] * run + np.arange(run)[None, :]).reshape(-1)
        spans = spans[spans < n]
        if len(spans) > size:  # the last run may end early; trim at random, not at the end
            spans = np.sort(rng.choice(spans, size=size, replace=False))
        return spans


def as_matrix(X: Any) -> FeatureMatrix:
    """``X`` as a FeatureMatrix (an array is wrapped, not copied)."""
    return X if isinstance(X, FeatureMatrix) else ArrayMatrix(X)


def check_finite(X: Any, keys: Sequence[str] | None = None, *, what: str = "training",
                 store_on_read: bool = False) -> FeatureMatrix:
    """``X`` as a FeatureMatrix whose rows were all found finite (read chunk by chunk, once).

    Refuses NaN/Inf rows naming their keys, as :func:`headstart.engine.heads.validate.check_features` does.
    Rows of a store are proved finite by the store's integrity check of their shards
    (:meth:`StoreMatrix.verify_shards`: each shard read once, a damaged one is a ``StoreDamagedError``);
    with ``store_on_read`` not even that pass is made: the store checks each shard before its first read
    anyway, so a single pass over the rows (a prediction) meets a damaged shard before using any of its rows.
    Training checks first (a damaged store fails before any fit, and a sweep does not record it per head).
    """
    from .validate import check_features

    if isinstance(X, FeatureMatrix) and X.checked_finite:
        return X
    if not isinstance(X, FeatureMatrix) or isinstance(X, ArrayMatrix):
        chunk_rows = X.chunk_rows if isinstance(X, ArrayMatrix) else None
        checked = ArrayMatrix(check_features(X.array if isinstance(X, ArrayMatrix) else X, keys, what=what),
                              chunk_rows)
        checked.checked_finite = True
        return checked
    matrix = X
    if len(matrix) == 0:
        raise DataError(f"no {what} items", hint="check the source and its error records")
    if isinstance(matrix, StoreMatrix) and (matrix.checks_on_read() if store_on_read else matrix.verify_shards()):
        matrix.checked_finite = True  # the store's check of each shard found every vector finite
        return matrix
    bad: list[np.ndarray] = []
    for positions, block in matrix.chunks():
        rows = ~np.isfinite(block).all(axis=1)
        if rows.any():
            bad.append(positions[rows])
    if bad:
        from .validate import _name_rows

        rows = np.sort(np.concatenate(bad))
        raise DataError(f"{len(rows)} {what} item(s) have NaN/Inf features: {_name_rows(rows, keys)}",
                        hint="drop or re-embed these items; NaN features usually mean a broken backbone or input")
    matrix.checked_finite = True
    return matrix


def in_memory_rows(dim: int, budget_bytes: int | None = None) -> int:
    """How many ``dim``-wide float32 rows fit the in-memory budget."""
    return max(1, int(budget_bytes or IN_MEMORY_BYTES) // (4 * max(int(dim), 1)))


def fit_input(estimator: Any, X: FeatureMatrix, y: np.ndarray, rows: np.ndarray, seed: int = 0,
              budget_bytes: int | None = None) -> tuple[Any, np.ndarray, dict[str, Any] | None]:
    """What ``estimator.fit`` gets for training rows ``rows``: (X, y, subsample record or None).

    A streaming head gets the lazy sub-matrix. Any other estimator gets the rows as an array; when
    they exceed the in-memory budget, a stratified subsample of them (every class keeps its share and
    at least one row), recorded as ``{"rows": kept, "of": len(rows), "budget_bytes": ...}``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if getattr(estimator, "streams_features", False):
        return X.subset(rows), y[rows], None
    limit = in_memory_rows(X.dim, budget_bytes)
    record = None
    if len(rows) > limit:
        from ..train.splits import stratified_split

        keep = stratified_split(y[rows], 1.0 - limit / len(rows), seed).train
        record = {"rows": int(len(keep)), "of": int(len(rows)), "budget_bytes": int(budget_bytes or IN_MEMORY_BYTES),
                  "method": "stratified"}
        rows = rows[keep]
    return X.take(rows), y[rows], record


def predict_in_chunks(estimator: Any, X: Any, method: str = "predict") -> np.ndarray:
    """``estimator.<method>(X)`` computed chunk by chunk (rows in X's order); arrays go through as they are."""
    if not isinstance(X, FeatureMatrix) or getattr(estimator, "streams_features", None) is not None:
        return np.asarray(getattr(estimator, method)(X))  # arrays, and our own heads (they chunk themselves)
    out: np.ndarray | None = None
    for positions, block in X.chunks():
        part = np.asarray(getattr(estimator, method)(block))
        if out is None:
            out = np.empty((len(X), *part.shape[1:]), dtype=part.dtype)
        out[positions] = part
    return out if out is not None else np.asarray(getattr(estimator, method)(np.empty((0, X.dim), np.float32)))


class FeatureSet:
    """Rows to train or predict on: ``vectors`` (an array or a :class:`FeatureMatrix`, e.g. rows of the
    feature store) and per-row columns (``rows``: a :class:`~headstart.engine.embed.rowtable.RowTable` of key
    digests, label codes and, where kept, refs). ``keys``, ``refs`` and ``labels`` are lists made on first
    access (for small sets and callers that want them); training, evaluation and prediction use the columns.
    """

    def __init__(self, keys: Sequence[str] | None = None, refs: Sequence[str] | None = None,
                 labels: Sequence[Any] | None = None, vectors: Any = None, errors: list[Any] | None = None,
                 fingerprint: str | None = None, backbone: str | None = None, precision: str = "fp32",
                 stats: dict[str, Any] | None = None, *, rows: Any = None) -> None:
        from ..embed.rowtable import RowTable

        if vectors is None:
            raise DataError("a FeatureSet needs its vectors", hint="pass vectors=(n, dim) array")
        if not hasattr(vectors, "shape"):
            vectors = np.asarray(vectors)
        self.vectors = vectors
        n = int(vectors.shape[0])
        self.rows = rows if rows is not None else RowTable.from_lists(keys, refs, labels, n, digests=False)
        if len(self.rows) != n:
            raise DataError(f"a FeatureSet of {n} vectors got {len(self.rows)} keys/labels",
                            hint="pass one key, ref and label per row")
        self.errors = list(errors or [])
        self.fingerprint, self.backbone, self.precision, self.stats = fingerprint, backbone, precision, stats
        self._lists: dict[str, list[Any]] = {}

    @classmethod
    def from_arrays(cls, X: Any, y: Sequence[Any] | None = None, *, keys: Sequence[str] | None = None,
                    fingerprint: str | None = None, backbone: str | None = None) -> "FeatureSet":
        """Wrap your own vectors (rows keyed ``row 0``, ``row 1``, ... unless ``keys`` are given)."""
        X = np.asarray(X)
        labels = [None if v is None else str(v) for v in y] if y is not None else None
        return cls(keys=list(keys) if keys is not None else None, labels=labels, vectors=X,
                   fingerprint=fingerprint, backbone=backbone)

    @classmethod
    def coerce(cls, obj: Any) -> "FeatureSet":
        """A FeatureSet from an ``EmbedResult``-like object (``.rows`` or ``.keys .refs .labels``, ``.vectors``).

        An embedding result whose vectors were not read yet becomes a :class:`StoreMatrix` over its
        store: the vectors stay on disk until a head reads them chunk by chunk.
        """
        if isinstance(obj, cls):
            return obj
        from ..embed.rowtable import RowTable

        rows = getattr(obj, "rows", None)
        if not isinstance(rows, RowTable):
            rows = RowTable.from_lists(_as_list(obj.keys), _as_list(obj.refs), _as_list(obj.labels))
        vectors = _store_rows(obj)
        if vectors is None:
            vectors = np.asarray(obj.vectors)
            if len(rows) == 0 and vectors.ndim != 2:
                vectors = np.empty((0, 0), np.float32)
        return cls(vectors=vectors, rows=rows, errors=list(getattr(obj, "errors", []) or []),
                   fingerprint=getattr(obj, "fingerprint", None), backbone=getattr(obj, "backbone", None),
                   precision=getattr(obj, "precision", "fp32") or "fp32",
                   stats=obj.stats.as_dict() if hasattr(getattr(obj, "stats", None), "as_dict") else None)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"FeatureSet({len(self)} rows, backbone={self.backbone!r})"

    @property
    def matrix(self) -> FeatureMatrix:
        return as_matrix(self.vectors)

    @property
    def keys(self) -> list[str]:
        """Every row's key (made on first access: from the store for store rows)."""
        if "keys" not in self._lists:
            self._lists["keys"] = list(self.key_names) if self.rows.keys is None else self.rows.keys
        return self._lists["keys"]

    @property
    def key_names(self) -> "KeyNames":
        """Keys by row, looked up only for the rows asked for (naming a few bad rows among millions)."""
        return KeyNames(self)

    @property
    def ref_names(self) -> "KeyNames":
        """Refs by row, made only for the rows asked for."""
        return KeyNames(self, refs=True)

    @property
    def refs(self) -> list[str]:
        if "refs" not in self._lists:
            refs = self.rows.refs
            if refs is None:
                refs = self.refs_of(np.arange(len(self)))
            self._lists["refs"] = refs if isinstance(refs, list) else refs.to_pylist()
        return self._lists["refs"]

    @property
    def labels(self) -> list[Any]:
        if "labels" not in self._lists:
            self._lists["labels"] = self.rows.labels()
        return self._lists["labels"]

    @property
    def digests(self) -> np.ndarray:
        """Every row's 16-byte key digest (the store's key digest; ``training_keys`` of a model)."""
        if self.rows.digests is None:
            from ..embed.rowtable import key_digests

            self.rows.digests = key_digests(self.keys)
        return self.rows.digests

    def subset(self, rows: np.ndarray) -> "FeatureSet":
        rows = np.asarray(rows, dtype=np.int64)
        return FeatureSet(vectors=self.vectors[rows], rows=self.rows.take(rows), errors=[],
                          fingerprint=self.fingerprint, backbone=self.backbone, precision=self.precision,
                          stats=self.stats)

    def keys_of(self, rows: np.ndarray) -> list[str]:
        """Keys of ``rows`` (looked up in the store for store rows: memory of those rows only)."""
        if self.rows.keys is not None:
            return [self.rows.keys[i] for i in rows]
        if isinstance(self.vectors, StoreMatrix):
            return self.vectors.store.keys_at(self.vectors.ids[rows]).tolist()
        return [f"row {i}" for i in rows]

    def refs_of(self, rows: np.ndarray) -> list[str | None]:
        """Refs of ``rows`` (kept refs; else the ones the store recorded; else the keys)."""
        refs = self.rows.refs
        if refs is None:
            if isinstance(self.vectors, StoreMatrix):
                return self.vectors.store.refs_at(self.vectors.ids[rows])
            return self.keys_of(rows)
        return [refs[i] for i in rows] if isinstance(refs, list) else refs.take(np.asarray(rows)).to_pylist()


class KeyNames:
    """A FeatureSet's keys (or refs) by row index, each looked up when asked for (naming a few bad rows
    among millions, or writing predictions chunk by chunk)."""

    def __init__(self, fs: FeatureSet, refs: bool = False) -> None:
        self.fs, self.of = fs, (fs.refs_of if refs else fs.keys_of)

    def __len__(self) -> int:
        return len(self.fs)

    def __getitem__(self, i: int) -> str:
        return self.of(np.asarray([i]))[0]

    def take(self, rows: np.ndarray) -> list[str]:
        return self.of(np.asarray(rows, dtype=np.int64))

    def __iter__(self) -> Iterator[str]:
        step = 1 << 16
        for start in range(0, len(self), step):
            yield from self.take(np.arange(start, min(start + step, len(self))))

    def __eq__(self, other: Any) -> bool:
        return list(self) == list(other)


def _as_list(values: Sequence[Any]) -> list[Any]:
    """``values`` as a list, shared rather than copied when it is one already (n pointers saved per column)."""
    return values if isinstance(values, list) else list(values)


def _store_rows(obj: Any) -> StoreMatrix | None:
    """The rows of an unread ``EmbedResult`` as a StoreMatrix (None: not store-backed, or already read).

    The row ids come from the result (looked up once by key digest); the matrix reads through a second
    snapshot (reading rows by id needs only the manifest; shards are append-only within a key-index
    epoch, so the ids stay valid).
    """
    path = getattr(obj, "store_path", None)
    if path is None or getattr(obj, "_vectors", None) is not None or not len(obj):
        return None
    from ..store.features import FeatureStore

    ids = obj.row_ids if hasattr(obj, "row_ids") else FeatureStore.load(path).ids(obj.keys)
    return StoreMatrix(FeatureStore.load(path), ids)
