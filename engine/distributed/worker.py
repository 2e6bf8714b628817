"""What runs inside a Ray actor: one onnxruntime session, and blocks of items in, Arrow tables out.

Input blocks have columns ``key``, ``ref``, ``payload`` (text: string; image: raw file bytes;
numeric: ``.npy`` bytes, loaded without pickle). Output blocks have ``key``, ``ref``, ``vector``
(fixed-size list of float32, zeros for failed rows), ``error`` and ``stage`` (null when the row
has a vector) and ``truncated``: readable with pyarrow alone, the store's own column layout.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from ..errors import HeadstartError
from ..faultpoints import pause_point


def payload_array(modality: str, payloads: list[Any]):
    """The ``payload`` column for a block of items of ``modality``."""
    import pyarrow as pa

    if modality == "text":
        return pa.array(payloads, type=pa.large_string())
    if modality == "image":
        return pa.array([bytes(p) for p in payloads], type=pa.large_binary())
    import numpy as np

    def npy(p: Any) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(p), allow_pickle=False)
        return buffer.getvalue()

    return pa.array([npy(p) for p in payloads], type=pa.large_binary())


def payloads_of(modality: str, column) -> list[Any]:
    """Inverse of :func:`payload_array`."""
    values = column.to_pylist()
    if modality != "numeric":
        return values
    import numpy as np

    return [np.load(io.BytesIO(v), allow_pickle=False) for v in values]


def materialize_export(exported, files: dict[str, bytes], exports_dir: Path):
    """Write a shipped export (``files``: name -> bytes) under ``exports_dir`` on this node; return it there.

    Used on nodes that do not share the driver's export cache. The encoder then checks every
    file's sha256 against the export manifest, so a damaged copy is refused, never run.
    """
    from dataclasses import replace

    from ..store.atomic import write_bytes_atomic

    folder = Path(exports_dir) / exported.path.parent.parent.name / exported.fingerprint
    for name, data in files.items():
        target = (folder / name).resolve()
        if folder.resolve() not in target.parents:
            raise HeadstartError(f"shipped export file {name!r} of '{exported.name}' leaves its folder",
                                 hint="re-run from a driver with an intact export cache")
        if not target.exists():
            write_bytes_atomic(target, data)
    return replace(exported, path=folder / exported.path.name)


class EmbedWorker:
    """A Ray Data callable class: the session is created once, in ``__init__``, per actor."""

    def __init__(self, exported, preprocessor, modality: str, device: str, threads: int, batch_size: int,
                 shipped=None) -> None:
        import ray

        if not exported.path.exists():
            if shipped is None:
                raise HeadstartError(f"export {exported.path} of '{exported.name}' is not on this node",
                                     hint="share the export cache between nodes, or let the driver ship it")
            from ..config import Settings

            exported = materialize_export(exported, ray.get(shipped), Settings.from_env().exports_dir)
        from ..backbones.runtime import Encoder

        self.encoder = Encoder(exported, device=device, threads=threads)
        self.preprocessor = preprocessor
        self.modality = modality
        self.dim = int(exported.manifest.get("dim", exported.spec.dim))
        self.batch_size = batch_size

    def __call__(self, block):
        import numpy as np

        from ..embed.batching import length_sorted_batches

        keys = block.column("key").to_pylist()
        pause_point("ray-block", keys=keys)
        refs = block.column("ref").to_pylist()
        prepared = self.preprocessor.prepare_many(payloads_of(self.modality, block.column("payload")))
        vectors = np.zeros((len(keys), self.dim), dtype=np.float32)
        errors: list[str | None] = [None] * len(keys)
        stages: list[str | None] = [None] * len(keys)
        good = []
        for i, p in enumerate(prepared):
            if isinstance(p, BaseException):
                errors[i] = p.message if isinstance(p, HeadstartError) else f"{type(p).__name__}: {p}"
                stages[i] = "preprocess"
            else:
                good.append(i)
        items = [prepared[i] for i in good]
        t = time.perf_counter()
        from ..embed.pipeline import MAX_TOKENS_PER_BATCH

        limit = MAX_TOKENS_PER_BATCH[self.encoder.device] if self.modality == "text" else None
        for batch in length_sorted_batches(items, self.preprocessor.length, self.batch_size, limit):
            rows = [good[i] for i in batch]
            vectors[rows] = self.encoder.run(self.preprocessor.collate([items[i] for i in batch]))
        finite = np.isfinite(vectors).all(axis=1)
        for i in good:
            if not finite[i]:
                vectors[i] = 0.0
                errors[i], stages[i] = "the backbone produced NaN/Inf for this item", "encode"
        truncated = [bool(errors[i] is None and self.preprocessor.truncated(prepared[i])) for i in range(len(keys))]
        return result_table(keys, refs, vectors, errors, stages, truncated, time.perf_counter() - t)


def result_table(keys, refs, vectors, errors, stages, truncated, seconds: float):
    """An output block (see the module docstring); ``seconds`` is this block's encoder time."""
    import numpy as np
    import pyarrow as pa

    from ..store.shards import vector_table

    table = vector_table(keys, refs, np.asarray(vectors, dtype=np.float32))
    return (table.append_column("error", pa.array(errors, type=pa.string()))
            .append_column("stage", pa.array(stages, type=pa.string()))
            .append_column("truncated", pa.array(truncated, type=pa.bool_()))
            .append_column("seconds", pa.array([seconds] * len(keys), type=pa.float64())))
