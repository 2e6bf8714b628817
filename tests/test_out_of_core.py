"""Out-of-core heads: features read from the store's shards chunk by chunk give the in-memory results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from headstart.engine.errors import DataError, StoreError
from headstart.engine.heads import features as F
from headstart.engine.heads.features import ArrayMatrix, FeatureSet, StoreMatrix, check_finite, predict_in_chunks
from headstart.engine.store.features import FeatureStore
from headstart.plugins.heads.linear import LinearHead
from headstart.plugins.heads.mlp import MLPHead

DIM, CLASSES = 24, 5


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, DIM)).astype(np.float32)
    y = rng.integers(0, CLASSES, n)
    X = (centres[y] + 1.6 * rng.standard_normal((n, DIM))).astype(np.float32)
    return X, np.array([f"class-{i}" for i in y], dtype=object)


def _stored(root: Path, X: np.ndarray, shard_size: int = 700, seed: int | None = 1) -> tuple[FeatureStore, list[str]]:
    """X written to a real store in several shards, in a shuffled order (``seed``; None: in order); keys[i] is
    row i of X."""
    keys = [f"key-{i:06d}" for i in range(len(X))]
    store = FeatureStore.open(root, fingerprint="fp-ooc", dim=X.shape[1], backbone="toy")
    order = np.arange(len(X)) if seed is None else np.random.default_rng(seed).permutation(len(X))
    with store.writer(shard_size=shard_size) as w:
        w.add([keys[i] for i in order], X[order])
    return FeatureStore.load(root), keys


@pytest.fixture
def stored(tmp_path: Path) -> tuple[StoreMatrix, np.ndarray, np.ndarray]:
    X, y = _data(6000)
    store, keys = _stored(tmp_path / "store", X)
    matrix = StoreMatrix(store, store.ids(keys), chunk_rows=1100)  # 6 chunks, each spread over shards
    return matrix, X, y


def test_store_matrix_reads_the_rows_asked_for(stored) -> None:
    matrix, X, _ = stored
    assert matrix.shape == X.shape and len(matrix.store.manifest["shards"]) == 9
    seen = np.zeros(len(X), int)
    for positions, block in matrix.chunks():
        assert len(block) <= 1100
        np.testing.assert_array_equal(block, X[positions])
        seen[positions] += 1
    assert (seen == 1).all()
    rows = np.array([5999, 0, 17, 17, 4200])
    np.testing.assert_array_equal(matrix.take(rows), X[rows])
    np.testing.assert_array_equal(np.asarray(matrix[100:110]), X[100:110])
    mask = np.zeros(len(X), bool)
    mask[[3, 4000]] = True
    np.testing.assert_array_equal(np.asarray(matrix[mask]), X[mask])
    np.testing.assert_array_equal(matrix.subset(rows).take(np.array([4, 0])), X[[4200, 5999]])


def test_read_rows_needs_no_key_table_and_refuses_unknown_ids(stored) -> None:
    matrix, X, _ = stored
    fresh = FeatureStore.load(matrix.store.path)
    np.testing.assert_array_equal(fresh.read_rows(matrix.ids[[3, 2, 1]]), X[[3, 2, 1]])
    assert fresh._keys is None  # the manifest's row counts were enough
    with pytest.raises(StoreError, match="row ids"):
        fresh.read_rows(np.array([0, 6000]))


def test_linear_out_of_core_reaches_the_in_memory_optimum(stored) -> None:
    matrix, X, y = stored
    in_memory = LinearHead().fit(X, y)
    streamed = LinearHead().fit(matrix, y)
    assert streamed.l2_ == pytest.approx(in_memory.l2_, rel=1e-12)  # the same path (from in-memory subsamples)
    scale = np.abs(in_memory.coef_).max()
    assert np.abs(streamed.coef_ - in_memory.coef_).max() <= 2e-3 * scale
    assert np.abs(streamed.intercept_ - in_memory.intercept_).max() <= 2e-3 * max(np.abs(in_memory.intercept_).max(), scale)
    proba = streamed.predict_proba(matrix)
    np.testing.assert_allclose(proba, in_memory.predict_proba(X), atol=1e-3)
    assert (streamed.predict(matrix) == in_memory.predict(X)).mean() >= 0.999
    assert streamed.score(np.asarray(matrix), y) == pytest.approx(in_memory.score(X, y), abs=1e-3)


def test_linear_objective_is_the_same_whatever_the_chunking(stored) -> None:
    """The full-batch loss and gradient summed over chunks equal the one-chunk values (fixed l2, max_iter)."""
    matrix, X, y = stored
    one = LinearHead(l2=1e-3, max_iter=25).fit(ArrayMatrix(X, chunk_rows=len(X)), y)
    many = LinearHead(l2=1e-3, max_iter=25).fit(ArrayMatrix(X, chunk_rows=1024), y)
    store = LinearHead(l2=1e-3, max_iter=25).fit(matrix, y)
    for other in (many, store):
        np.testing.assert_allclose(other.coef_, one.coef_, atol=2e-4 * np.abs(one.coef_).max())


@pytest.mark.parametrize("warm_rows", [None, 3_000])
def test_linear_head_does_not_depend_on_the_store_layout(tmp_path: Path, warm_rows, monkeypatch) -> None:
    """The same vectors stored in three layouts (shuffled into 700-row shards, shuffled otherwise into 1,900-row
    shards, in order) train the same head to the bit, and the same as the array in memory chunked alike: the
    sums run in position order, not in storage order (a Ray-written store and a local one train alike).
    With ``warm_rows`` the fit starts from an in-memory warm-up sample (runs of positions, not of storage),
    the path a 10M-row set takes."""
    from headstart.plugins.heads import linear

    if warm_rows:
        monkeypatch.setattr(linear, "WARM_ROWS", warm_rows)
        monkeypatch.setattr(linear, "COV_ROWS", 1_000)
    X, y = _data(6000, seed=3)
    layouts = [(700, 1), (1900, 2), (1000, None)]
    fitted = []
    for i, (shard_size, seed) in enumerate(layouts):
        store, keys = _stored(tmp_path / f"store{i}", X, shard_size=shard_size, seed=seed)
        fitted.append(LinearHead().fit(StoreMatrix(store, store.ids(keys), chunk_rows=1100), y))
    if not warm_rows:  # (an array in memory samples its warm-up rows one by one, a store in short runs)
        fitted.append(LinearHead().fit(ArrayMatrix(X, chunk_rows=1100), y))
    first = fitted[0]
    for other in fitted[1:]:
        assert other.l2_ == first.l2_ and other.fit_passes_ == first.fit_passes_
        np.testing.assert_array_equal(other.coef_, first.coef_)
        np.testing.assert_array_equal(other.intercept_, first.intercept_)


def test_mlp_out_of_core_takes_the_in_memory_minibatches(stored) -> None:
    matrix, X, y = stored
    params = dict(hidden=(16,), max_epochs=2, batch_size=250, patience=10)
    in_memory = MLPHead(**params).fit(X, y)
    streamed = MLPHead(**params).fit(matrix, y)  # chunks of 1,100 rows: reads of 1,000 = 4 whole minibatches
    assert streamed.n_epochs_ == in_memory.n_epochs_ == 2
    for name, value in in_memory.net_.state_dict().items():
        np.testing.assert_allclose(streamed.net_.state_dict()[name].numpy(), value.numpy(), atol=1e-5)
    assert streamed.best_val_loss_ == pytest.approx(in_memory.best_val_loss_, rel=1e-5)


def test_sklearn_estimators_predict_chunk_by_chunk(stored) -> None:
    from sklearn.linear_model import LogisticRegression

    matrix, X, y = stored
    est = LogisticRegression(max_iter=200).fit(X[:2000], y[:2000])
    np.testing.assert_array_equal(predict_in_chunks(est, matrix), est.predict(X))
    np.testing.assert_allclose(predict_in_chunks(est, matrix, "predict_proba"), est.predict_proba(X), atol=1e-6)


def test_in_memory_budget_takes_a_stratified_subsample(stored) -> None:
    from sklearn.linear_model import LogisticRegression

    matrix, X, y = stored
    budget = 1500 * DIM * 4
    est = LogisticRegression()
    X_fit, y_fit, record = F.fit_input(est, matrix, y, np.arange(len(y)), seed=0, budget_bytes=budget)
    assert isinstance(X_fit, np.ndarray) and len(X_fit) == len(y_fit) == record["rows"]
    assert abs(record["rows"] - 1500) <= CLASSES and record["of"] == 6000 and record["method"] == "stratified"
    share = {c: np.mean(y == c) for c in np.unique(y)}
    for c, s in share.items():
        assert np.mean(y_fit == c) == pytest.approx(s, abs=0.01)
    streamed, _, none = F.fit_input(LinearHead(), matrix, y, np.arange(len(y)), budget_bytes=budget)
    assert isinstance(streamed, StoreMatrix) and none is None  # a streaming head is never subsampled


def test_check_finite_names_bad_rows_and_marks_subsets() -> None:
    X, _ = _data(50)
    X[7, 3] = np.nan
    with pytest.raises(DataError, match="key-7"):
        check_finite(X, [f"key-{i}" for i in range(50)])
    good = check_finite(np.delete(X, 7, axis=0))
    assert good.checked_finite and good.subset(np.array([1, 2])).checked_finite


# -- end to end: train / eval / predict on an embedded source ------------------------------------------


def _tiny_backbone(folder: Path) -> str:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(3).standard_normal((8, DIM)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("ReduceL2", ["h"], ["norm"], axes=[1], keepdims=1),
         helper.make_node("Div", ["h", "norm"], ["embedding"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", DIM])], [numpy_helper.from_array(w, "W")])
    path = folder / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    path.with_suffix(".headstart.json").write_text(json.dumps(
        {"modality": "numeric", "dim": DIM, "preprocessing": {"input_name": "x", "shape": [8], "dtype": "float32"}}))
    return f"onnx:{path}"


def _parquet(path: Path, n: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    centres = rng.standard_normal((CLASSES, 8)).astype(np.float32)
    y = rng.integers(0, CLASSES, n)
    x = (centres[y] + 0.8 * rng.standard_normal((n, 8))).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), 8)
    pq.write_table(pa.table({"x": column, "label": [f"c{i}" for i in y]}), path, row_group_size=1000)
    return path


def test_train_eval_predict_stream_from_the_store(tmp_path: Path, headstart_home: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from headstart.engine.train.api import evaluate, predict, train
    from headstart.engine.train.model import load_features

    backbone, source = _tiny_backbone(tmp_path), _parquet(tmp_path / "items.parquet", 5000)
    monkeypatch.setattr(F, "CHUNK_BYTES", 1024 * DIM * 4)  # 1,024-row chunks: 5 per pass
    fs = load_features(str(source), backbone, labelled=True, progress=False)
    assert isinstance(fs.vectors, StoreMatrix) and fs.vectors.store._keys is None  # nothing materialised
    streamed = train(fs, "linear", out=tmp_path / "streamed")
    memory = FeatureSet(keys=fs.keys, refs=fs.refs, labels=fs.labels, vectors=np.asarray(fs.vectors),
                        fingerprint=fs.fingerprint, backbone=fs.backbone)
    monkeypatch.setattr(F, "CHUNK_BYTES", 64 << 20)  # one chunk: the in-memory fit
    in_memory = train(memory, "linear", out=tmp_path / "memory")
    assert streamed.metrics["accuracy"] == pytest.approx(in_memory.metrics["accuracy"], abs=1e-3)
    a, b = streamed.model.head, in_memory.model.head
    assert np.abs(a.coef_ - b.coef_).max() <= 2e-3 * np.abs(b.coef_).max()
    monkeypatch.setattr(F, "CHUNK_BYTES", 1024 * DIM * 4)
    metrics = evaluate(tmp_path / "streamed", str(source), progress=False)
    assert metrics["n"] == 5000 and metrics["accuracy"] == pytest.approx(streamed.model.evaluate(memory)["accuracy"])
    out = predict(tmp_path / "streamed", str(source), tmp_path / "pred.jsonl", progress=False)
    assert out.proba.shape == (5000, CLASSES) and len(out.labels) == 5000
    assert out.labels == [str(v) for v in a.predict(np.asarray(fs.vectors))]


def test_sklearn_head_over_budget_is_subsampled_and_recorded(tmp_path: Path, headstart_home: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from headstart.engine.train.api import sweep, train

    backbone, source = _tiny_backbone(tmp_path), _parquet(tmp_path / "items.parquet", 3000)
    monkeypatch.setattr(F, "IN_MEMORY_BYTES", 1000 * DIM * 4)
    result = train(str(source), "sklearn:LogisticRegression(max_iter=300)", backbone=backbone,
                   out=tmp_path / "model", progress=False)
    assert result.metrics["subsample"]["of"] == 2400 and abs(result.metrics["subsample"]["rows"] - 1000) <= CLASSES
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["training"]["subsample"]["of"] == 3000  # the refit on all labelled rows
    assert result.metrics["accuracy"] > 0.5
    rows = sweep(str(source), ["linear", "sklearn:LogisticRegression(max_iter=300)"], backbone=backbone,
                 progress=False).rows
    assert "subsample" not in rows[0] and rows[1]["subsample"]["rows"] <= 1000 + CLASSES
