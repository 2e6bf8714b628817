"""What training reads of the feature store's shards (issue 12): each shard is read once for its integrity and
NaN checks together, samples are short contiguous runs, the refit starts from the validation fit, and the
bytes read are counted (``training.reads``) so that the passes over the data are visible.

A real store (a tiny ``onnx:`` backbone over numeric Parquet, shards of the default size) and real shard files:
one is damaged on disk to show that the one check pass still refuses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_train_scale import labelled_parquet


def _store_matrix(source: Path, backbone: str):
    """The embedded rows of ``source`` as a StoreMatrix over a fresh snapshot, with its shards' integrity
    forgotten by this process (as in a new process: the embedding that wrote them checked them)."""
    import headstart
    from headstart.engine.heads.features import FeatureSet, StoreMatrix
    from headstart.engine.store import integrity

    fs = FeatureSet.coerce(headstart.embed(source, backbone, progress=False))
    assert isinstance(fs.vectors, StoreMatrix)
    for entry, _ in fs.vectors.store.vector_shards():
        integrity.forget(fs.vectors.store.path, entry["file"])
    return fs


def _shard_bytes(store) -> tuple[int, int]:
    entries = [entry for entry, _ in store.vector_shards()]
    return len(entries), sum(int(e["bytes"]) for e in entries)


def test_nan_check_reads_each_shard_once_and_no_row(tmp_path, home, tiny_backbone):
    """``check_finite`` of store rows is the store's own check of each shard (sha256, finite, unit norm): every
    shard is read once, no row is copied; a second check reads nothing."""
    from headstart.engine.heads.features import check_finite

    source, _, _ = labelled_parquet(tmp_path / "x.parquet", 10_000)
    fs = _store_matrix(source, tiny_backbone)
    X = fs.vectors
    shards, size = _shard_bytes(X.store)
    assert shards >= 3
    checked = check_finite(X[np.arange(0, len(X), 2)])  # a subset: the reads are counted on the shared log
    assert checked.checked_finite
    assert X.reads.as_dict() == {"bytes_read": size, "checked_bytes": size, "row_bytes": 0, "checked_shards": shards}
    check_finite(X)
    assert X.reads.bytes_read == size  # every shard was checked in this process already


def test_a_damaged_shard_is_refused_by_the_one_check_pass(tmp_path, home, tiny_backbone):
    """A vector of one shard overwritten with NaN on disk: the check pass raises StoreDamagedError naming the
    shard, before any fit reads a row (the linear head never trains on it silently)."""
    import headstart
    from headstart.engine.errors import StoreDamagedError
    from headstart.engine.heads.features import check_finite
    from headstart.engine.store import shards as sh

    source, _, _ = labelled_parquet(tmp_path / "x.parquet", 10_000)
    fs = _store_matrix(source, tiny_backbone)
    store = fs.vectors.store
    entry, _ = store.vector_shards()[1]
    path = store.path / entry["file"]
    vectors = sh.vectors_of(sh.read_table(path, ["vector"]), store.dim)
    offset = path.read_bytes().find(vectors[7].tobytes())
    assert offset > 0
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = np.float32(np.nan).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(StoreDamagedError, match=entry["file"]):
        check_finite(fs.vectors)
    with pytest.raises(StoreDamagedError):
        headstart.train(fs, "linear")


def test_store_samples_are_short_contiguous_runs(tmp_path, home, tiny_backbone):
    """A store matrix's sample is made of runs of SAMPLE_RUN consecutive positions, without repeats, of the size
    asked for: for a split of a source (sorted positions) over the store written from it, runs of consecutive
    rows of storage (sorted row ids); an in-memory matrix samples single rows."""
    from headstart.engine.heads.features import ArrayMatrix, StoreMatrix

    source, _, _ = labelled_parquet(tmp_path / "x.parquet", 10_000)
    X = _store_matrix(source, tiny_backbone).vectors
    sub = X[np.sort(np.random.default_rng(0).permutation(len(X))[:9_000])]  # sorted, as a split gives them
    positions = sub.sample(1_000, np.random.default_rng(1))
    assert len(positions) == len(np.unique(positions)) == 1_000
    ranks = np.sort(np.searchsorted(np.sort(sub.ids), sub.ids[positions]))
    runs = 1 + int((np.diff(ranks) != 1).sum())
    assert runs <= -(-1_000 // StoreMatrix.SAMPLE_RUN) + 1  # ~16 runs, not 1,000 single rows
    assert np.array_equal(sub.take(positions), np.asarray(X.store.read_rows(sub.ids[positions])))
    single = ArrayMatrix(np.zeros((9_000, 4), np.float32)).sample(1_000, np.random.default_rng(1))
    assert 1 + int((np.diff(single) != 1).sum()) > 500


def test_training_reads_each_shard_once_and_counts_its_passes(tmp_path, home, tiny_backbone, monkeypatch):
    """`train --head linear` on store rows, with the in-memory warm-up above 3,000 rows (so this small set takes
    the path a 10M set takes): every shard is hashed exactly once (integrity and NaN checks in one read); the
    rows read are the full-batch passes the fits report, the validation predictions and the samples, nothing
    more (at most 1.5 passes besides the fits'); the refit starts from the validation fit's weights, so it
    needs at most REFIT_ITERS iterations; the counter is in the model's training summary."""
    import headstart
    from headstart.plugins.heads import linear

    monkeypatch.setattr(linear, "WARM_ROWS", 3_000)
    monkeypatch.setattr(linear, "COV_ROWS", 1_000)
    source, _, _ = labelled_parquet(tmp_path / "x.parquet", 12_000)
    fs = _store_matrix(source, tiny_backbone)
    shards, size = _shard_bytes(fs.vectors.store)
    result = headstart.train(fs, "linear", out=tmp_path / "model")
    training = result.model.manifest["training"]
    reads, passes = training["reads"], training["fit_passes"]
    assert reads["checked_shards"] == shards and reads["checked_bytes"] == size
    row = fs.vectors.dim * 4
    n, n_train = training["n_labelled"], training["n_train"]
    fitted = passes["validation"] * n_train + passes["refit"] * n  # full-batch passes, in rows
    assert fitted * row <= reads["row_bytes"] <= (fitted + 1.5 * n) * row, (reads, passes)
    assert reads["data_bytes"] == n * row and reads["passes"] == round(reads["bytes_read"] / (n * row), 2)
    # the refit resumed: a few iterations (each a pass, plus line-search passes), not the validation fit's count
    assert passes["refit"] <= 2 * linear.REFIT_ITERS < passes["validation"]
    assert result.metrics["accuracy"] > 0.5
    scratch = headstart.train(fs, "linear", refit=False)
    assert abs(scratch.metrics["accuracy"] - result.metrics["accuracy"]) < 1e-9  # the same validation fit


def test_prediction_reads_store_rows_in_one_pass_and_still_refuses_a_damaged_shard(tmp_path, home, tiny_backbone):
    """`eval`/`predict` on store rows make one pass: each shard is checked by the store just before its rows are
    first read (no check pass of its own), so the bytes read are the shards once plus the rows once; a shard
    damaged on disk is still refused (StoreDamagedError), never predicted from."""
    import headstart
    from headstart.engine.errors import StoreDamagedError

    source, _, _ = labelled_parquet(tmp_path / "x.parquet", 10_000)
    fs = _store_matrix(source, tiny_backbone)
    model = headstart.train(fs, "linear", refit=False).model
    fresh = _store_matrix(source, tiny_backbone)
    shards, size = _shard_bytes(fresh.vectors.store)
    predicted = model.predict(fresh)
    assert len(predicted.labels) == len(fresh)
    assert fresh.vectors.reads.as_dict() == {"bytes_read": size + len(fresh) * fresh.vectors.dim * 4,
                                             "checked_bytes": size, "row_bytes": len(fresh) * fresh.vectors.dim * 4,
                                             "checked_shards": shards}
    later = _store_matrix(source, tiny_backbone)  # rows of the same snapshot, not read yet in this process
    entry, _ = later.vectors.store.vector_shards()[-1]
    path = later.vectors.store.path / entry["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside the last shard
    path.write_bytes(bytes(data))
    with pytest.raises(StoreDamagedError, match=entry["file"]):
        model.predict(later)


def test_the_row_id_lookup_of_an_embedding_result_hashes_no_shard(tmp_path, home, tiny_backbone):
    """Finding the store rows of an embedding result (``row_ids``: by key digest) hashes no shard whose size and
    mtime are as committed (it used to check every shard of the store first: a whole read of a 16 GB store
    before training on any part of it); the shards are hashed when their vectors are first read."""
    import headstart
    from headstart.engine.store import integrity

    source, _, _ = labelled_parquet(tmp_path / "x.parquet", 10_000)
    result = headstart.embed(source, tiny_backbone, progress=False)
    store = result.store
    for entry, _ in store.vector_shards():
        integrity.forget(store.path, entry["file"])
    before = integrity.hashed_shards
    again = headstart.embed(source, tiny_backbone, progress=False)  # a warm run: look-ups only
    assert len(again.row_ids) == len(result.rows) and integrity.hashed_shards == before
    again.vectors  # reading the vectors checks each shard (once)
    assert integrity.hashed_shards == before + len(store.vector_shards())
