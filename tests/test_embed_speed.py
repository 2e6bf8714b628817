"""The warm/cold embed path at scale (issue 12, acceptance 1): keys computed a batch at a time are the keys of
the item-by-item path, look-ups answer like a dict, a warm re-run hashes no shard, and the bookkeeping that
tells duplicates from cache hits (a bit per pre-run store row) answers like a set of every key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from headstart.engine.embed.items import ItemBatch, ReaderOptions, content_key, item_batches, row_keys, text_keys
from headstart.engine.embed.sources import open_source

WIDTH = 16

pytestmark = pytest.mark.timeout(600)


# -- batch keys == item keys, for every built-in reader -------------------------------------------------


def _parquet(path: Path, columns: dict, row_group: int = 7) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group)
    return path


def _sources(tmp: Path) -> dict[str, tuple[Path, ReaderOptions | None]]:
    import pyarrow as pa
    from PIL import Image

    rng = np.random.default_rng(0)
    x = rng.standard_normal((23, WIDTH)).astype(np.float32)
    x[5] = 0.0  # bytes that end in zeros
    flat = pa.array(x.reshape(-1), pa.float32())
    fixed = pa.FixedSizeListArray.from_arrays(flat, WIDTH)
    mask = np.zeros(23, bool)
    mask[[3, 17]] = True
    with_nulls = pa.FixedSizeListArray.from_arrays(flat, WIDTH, mask=pa.array(mask))
    labels = [None if i == 4 else f"c{i % 3}" for i in range(23)]
    texts = [None if i == 6 else f"text {i % 9} é\u200b" for i in range(23)]
    out: dict[str, tuple[Path, ReaderOptions | None]] = {
        "parquet fixed list": (_parquet(tmp / "fixed.parquet", {"x": fixed, "label": labels}), None),
        "parquet null rows": (_parquet(tmp / "nulls.parquet", {"x": with_nulls, "label": labels}), None),
        "parquet int labels": (_parquet(tmp / "ints.parquet", {"x": fixed, "label": [i % 4 for i in range(23)]}),
                               None),
        "parquet scalars": (_parquet(tmp / "scalars.parquet", {
            "a": pa.array([None if i == 9 else float(i) for i in range(23)]), "b": list(range(23))}), None),
        "parquet text": (_parquet(tmp / "text.parquet", {"text": texts, "label": labels}), None),
        "parquet binary": (_parquet(tmp / "binary.parquet", {
            "text": pa.array([b"\xff\xfe" if i == 2 else f"b{i % 5}".encode() for i in range(23)], pa.binary()),
            "label": labels}), None),
        "parquet variable list": (_parquet(tmp / "ragged.parquet", {
            "x": pa.array([list(range(1 + i % 4)) for i in range(23)], pa.list_(pa.int64()))}), None),
        "parquet list labels": (_parquet(tmp / "listlabels.parquet", {
            "x": fixed, "label": pa.array([["a"] if i == 8 else [] for i in range(23)])}),
            ReaderOptions(label_column="label")),
    }
    csv = tmp / "a.csv"
    csv.write_text("text,label\n" + "".join(f"row {i % 7},{'l' + str(i % 2)}\n" for i in range(23)) + ",x\n")
    out["csv"] = (csv, None)
    jsonl = tmp / "a.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"j{i % 6}", "label": i % 2}) + "\n" for i in range(23)) + "{bad\n")
    out["jsonl"] = (jsonl, None)
    text = tmp / "a.txt"
    text.write_bytes(b"".join(f"line {i % 5}\n".encode() for i in range(23)) + b"\xff\n")
    out["text"] = (text, None)
    npy = tmp / "a.npy"
    np.save(npy, x)
    out["npy"] = (npy, None)
    folder = tmp / "images"
    for i in range(7):
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8 + i, 8), (i * 30, 10, 200)).save(folder / f"class{i % 2}" / f"{i}.png")
    (folder / "class0" / "broken.png").write_bytes(b"not a png")
    out["image folder"] = (folder, None)
    return out


def _flatten(batches: list[ItemBatch]) -> list[tuple]:
    rows = []
    for batch in batches:
        assert len(batch.keys) == len(batch.refs) == len(batch.labels)
        for i in range(len(batch)):
            item = batch.item(i)
            rows.append((item.key, item.ref, item.label, item.error, item.modality))
    return rows


@pytest.mark.parametrize("size", [1, 5, 4096])
def test_batch_keys_equal_item_keys_for_every_reader(tmp_path: Path, size: int) -> None:
    """For every built-in reader and column kind (nulls, bad labels, bytes ending in zeros, non-UTF-8, ragged
    lists): the batch path gives each row the key, ref, label and error of the item-by-item path."""
    for name, (path, options) in _sources(tmp_path).items():
        items = list(open_source(path, options))
        batches = list(item_batches(open_source(path, options), size))
        assert _flatten(batches) == [(it.key, it.ref, it.label, it.error, it.modality) for it in items], name
        assert all(len(b) <= max(size, 1) for b in batches), name
        payloads = [b.item(i).payload for b in batches for i in range(len(b))]
        for item, payload in zip(items, payloads):
            if item.error is None:
                assert np.array_equal(np.asarray(item.payload), np.asarray(payload)), name
                assert content_key(payload) == item.key, name  # the key is the payload's content key


def test_parquet_numeric_batches_are_arrays_not_row_objects(tmp_path: Path) -> None:
    """The numeric Parquet batch path keeps the rows as one 2-D array (no Python object per row)."""
    import pyarrow as pa

    x = np.random.default_rng(1).standard_normal((50, WIDTH)).astype(np.float32)
    path = _parquet(tmp_path / "x.parquet", {"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), WIDTH),
                                             "label": ["a"] * 50}, row_group=50)
    (batch,) = list(item_batches(open_source(path), 64))
    assert isinstance(batch.payloads, np.ndarray) and batch.payloads.shape == (50, WIDTH)
    assert batch.keys == [content_key(row) for row in x]


def test_row_and_text_keys_equal_content_key() -> None:
    rng = np.random.default_rng(2)
    for array in (rng.standard_normal((9, 4)), rng.integers(0, 5, (9, 3, 2)).astype(np.int8),
                  np.zeros((4, WIDTH), np.float32), np.ones((3, 0))):
        assert row_keys(array) == [content_key(row) for row in array]
    texts = ["", "a", "é\u200b", "\ud800 lone surrogate", "x" * 10_000]
    assert text_keys(texts) == [content_key(t) for t in texts]


# -- look-ups ----------------------------------------------------------------------------------------


def _store(tmp_path: Path, dim: int = 4):
    from headstart.engine.store.features import FeatureStore

    return FeatureStore.open(tmp_path / "store", fingerprint="f" * 16, dim=dim, backbone="test")


def test_vectorised_contains_and_locate_equal_a_dict(tmp_path: Path) -> None:
    """contains()/locate() over many segments (merged and not), with error records: what a dict of every
    stored key answers, rows included."""
    from headstart.engine.store.features import ErrorRecord

    store = _store(tmp_path)
    rng = np.random.default_rng(3)
    reference: dict[str, int] = {}
    errors: dict[str, int] = {}
    with store.writer(shard_size=97) as writer:
        for part in range(40):
            keys = [content_key(f"k{part}-{i}") for i in range(61)]
            vectors = rng.standard_normal((61, 4)).astype(np.float32)
            writer.add(keys, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
            for key in keys:
                reference.setdefault(key, len(reference))
            bad = [content_key(f"e{part}-{i}") for i in range(3)]
            writer.add_errors([ErrorRecord(k, f"ref{k[:6]}", "bad", "read") for k in bad])
            writer.commit()
            for key in bad:
                errors.setdefault(key, len(errors))
    probe = list(reference)[::3] + list(errors)[::2] + [content_key(f"absent {i}") for i in range(100)]
    probe = [probe[i] for i in np.random.default_rng(4).permutation(len(probe))]
    fresh = type(store).load(store.path)
    vector_rows, error_rows = fresh.locate(probe)
    assert vector_rows.tolist() == [reference.get(k, -1) for k in probe]
    assert error_rows.tolist() == [errors.get(k, -1) for k in probe]
    assert fresh.contains(probe).tolist() == [k in reference or k in errors for k in probe]
    assert fresh.contains(probe, include_errors=False).tolist() == [k in reference for k in probe]


def test_a_digest_stored_twice_looks_up_its_smallest_row_through_merges(tmp_path: Path) -> None:
    """A key stored twice (two Ray workers met the same content) always gives the same row: the smallest,
    before and after merges (the duplicate counting of a job relies on one row per key)."""
    from headstart.engine.store import keyindex
    from headstart.engine.store.keyindex import KeyIndex, digests

    index = KeyIndex(tmp_path / "keys")
    twice = digests(["twice"])
    for commit in range(keyindex.FANOUT * 2 + 1):
        keys = digests([f"k{commit}-{i}" for i in range(5)])
        values = np.arange(commit * 10, commit * 10 + 5)
        if commit in (2, 9, 16):
            keys, values = np.concatenate([keys, twice]), np.concatenate([values, [1000 - commit]])
        index.commit(keys, values)
        if commit >= 2:
            expected = 1000 - max(c for c in (2, 9, 16) if c <= commit)
            assert KeyIndex(index.folder).lookup(twice).tolist() == [expected], commit
    assert len(index.segments) < keyindex.FANOUT * 2 + 1  # merges happened


# -- a warm re-run trusts shards by their recorded size and mtime: it hashes none ------------------------------


def _numeric_parquet(path: Path, x: np.ndarray) -> Path:
    import pyarrow as pa

    column = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).reshape(-1), pa.float32()), WIDTH)
    return _parquet(path, {"x": column, "label": [f"c{i % 3}" for i in range(len(x))]}, row_group=300)


def test_warm_rerun_hashes_no_shard_and_an_edited_shard_is_still_found(tmp_path: Path, home: Path,
                                                                       tiny_backbone: str) -> None:
    """A warm re-run only asks "is this key stored?": the process hashes no shard (the integrity module's
    count of sha256 checks stays put). A shard edited after its commit (its mtime changed) is hashed, found
    damaged, dropped and its items embedded again."""
    from headstart.engine.embed.pipeline import embed
    from headstart.engine.store import integrity

    x = np.random.default_rng(5).standard_normal((1200, WIDTH)).astype(np.float32)
    data = _numeric_parquet(tmp_path / "x.parquet", x)
    cold = embed(data, tiny_backbone, chunk_size=256, progress=False)
    assert cold.stats.embedded == 1200
    store_dir = next((home / "features").iterdir())
    manifest = json.loads((store_dir / "manifest.json").read_text())
    vectors = [s for s in manifest["shards"] if s["kind"] == "vectors"]
    assert len(vectors) >= 4 and all("mtime_ns" in s for s in vectors)

    before = integrity.hashed_shards
    warm = embed(data, tiny_backbone, chunk_size=256, progress=False, keep_rows=False)
    assert (warm.stats.cached, warm.stats.embedded) == (1200, 0)
    assert integrity.hashed_shards == before  # no shard hashed

    damaged = store_dir / vectors[1]["file"]
    raw = bytearray(damaged.read_bytes())
    raw[-200] ^= 0x01  # inside the file, same size; the write moves its mtime
    damaged.write_bytes(bytes(raw))
    integrity._intact.clear()  # a new process would not remember the shards it checked
    again = embed(data, tiny_backbone, chunk_size=256, progress=False, keep_rows=False)
    assert integrity.hashed_shards == before + 1  # only the edited shard
    assert (again.stats.embedded, again.stats.cached) == (vectors[1]["rows"], 1200 - vectors[1]["rows"])


# -- duplicate bookkeeping: a bit per store row held before the job ------------------------------------------


def _manifest(epoch: str, vectors: list[tuple[str, int]], errors: list[tuple[str, int]]) -> dict:
    return {"key_index": epoch, "shards": [{"file": f, "kind": "vectors", "rows": r} for f, r in vectors]
            + [{"file": f, "kind": "errors", "rows": r} for f, r in errors]}


def test_met_rows_answer_like_a_set() -> None:
    """MetRows.meet says "first time" exactly where a set of met rows says the row is new, for rows held
    before the job; rows committed during the job and absent keys are never "first time" here."""
    from headstart.engine.embed.seen import MetRows

    rng = np.random.default_rng(6)
    met, reference = MetRows(), set()
    met.follow(_manifest("e1", [("a", 600), ("b", 400)], [("x", 50)]))  # the first call starts it
    for size in (1, 7, 300, 5, 4096, 2, 1000):
        vectors = rng.integers(-1, 1200, size)  # -1: absent; >= 1000: committed during the job
        errors = np.where(vectors < 0, rng.integers(-1, 60, size), -1)
        first = met.meet(vectors, errors)
        expected = []
        for v, e in zip(vectors.tolist(), errors.tolist()):
            row = ("v", v) if 0 <= v < 1000 else ("e", e) if v < 0 and 0 <= e < 50 else None
            expected.append(row is not None and row not in reference)
            if row is not None:
                reference.add(row)
        assert first.tolist() == expected


def test_met_rows_follow_a_dropped_shard() -> None:
    """A look-up that hits a damaged shard drops it (new epoch, rows renumbered): the rows met before keep
    their "met" bit at their new numbers, the dropped shard's rows are gone, later rows shift down."""
    from headstart.engine.embed.seen import MetRows

    met = MetRows()
    met.follow(_manifest("e1", [("a", 10), ("b", 7), ("c", 5)], []))
    assert met.meet(np.array([2, 12, 19, 2]), np.full(4, -1)).tolist() == [True, True, True, False]
    met.follow(_manifest("e1", [("a", 10), ("b", 7), ("c", 5), ("new", 4)], []))  # a commit: same epoch
    met.follow(_manifest("e2", [("a", 10), ("c", 5), ("new", 4)], []))  # "b" dropped
    # a: row 2 met, row 3 not; c: old row 19 is new row 12 (met), old 18 new 11 (not); "new" (committed in
    # the job): rows 15.. never first
    assert met.meet(np.array([2, 3, 12, 11, 16, 4]), np.full(6, -1)).tolist() == [False, True, False, True,
                                                                                  False, True]
