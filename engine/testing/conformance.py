"""Conformance kits for plugins: heads, readers and backbones.

Use them in a plugin's own tests (all three are in :mod:`headstart.sdk`)::

    from headstart.sdk import check_backbone, check_head, check_reader
    check_head(my_head_spec)              # a HeadSpec (``arg=`` for heads that take one)
    check_head(lambda: MyHead(k=3))       # or any factory of unfitted estimators
    check_reader(my_reader_spec, "tests/data/sample.ext")
    check_backbone(my_backbone_spec)      # exports, passes the parity gate, encodes its probes

Each raises :class:`AssertionError` naming the broken rule, and returns a small report.
"""

from __future__ import annotations

import tempfile
from typing import Any, Callable

import numpy as np

from ..embed.items import Item, ReaderOptions, ReaderSpec, content_key
from ..errors import ExportParityError, HeadstartError
from ..heads.spec import HeadSpec


def _factory(head: HeadSpec | Callable[[], Any], arg: str | None, params: dict[str, Any]) -> Callable[[], Any]:
    if isinstance(head, HeadSpec):
        return lambda: head.build(arg, **params)
    return lambda: head(**params)


def conformance_data(n_per_class: int = 40, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated classes with string labels (unit-norm rows, like embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, dim)) * 3
    X = np.concatenate([c + rng.standard_normal((n_per_class, dim)) for c in centres]).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = np.repeat(np.array(["ant", "bee", "cat"], dtype=object), n_per_class)
    order = rng.permutation(len(y))
    return X[order], y[order]


def check_head(head: HeadSpec | Callable[..., Any], *, arg: str | None = None, params: dict[str, Any] | None = None,
               min_accuracy: float = 0.9) -> dict[str, Any]:
    """Check one head; returns ``{"estimator", "accuracy", "format"}``."""
    from sklearn.base import clone

    from ..heads.persist import load_head, safe_format, save_head

    make = _factory(head, arg, dict(params or {}))
    est = make()
    name = type(est).__name__
    for method in ("fit", "predict", "get_params", "set_params"):
        assert callable(getattr(est, method, None)), f"{name} has no {method}()"
    fitted_before = [a for a in vars(est) if a.endswith("_") and not a.startswith("_")]
    assert not fitted_before, f"{name}.__init__ sets fitted attributes {fitted_before}; __init__ must only store params"
    params_now = est.get_params(deep=False)
    assert isinstance(params_now, dict), f"{name}.get_params() must return a dict"
    twin = clone(est)
    assert type(twin) is type(est) and twin.get_params(deep=False).keys() == params_now.keys(), \
        f"sklearn.base.clone({name}) does not reproduce its parameters"
    assert est.set_params(**params_now) is est, f"{name}.set_params() must return self"
    X, y = conformance_data()
    try:
        est.predict(X)
    except Exception:  # noqa: BLE001 - any error is fine; silently predicting is not
        pass
    else:
        raise AssertionError(f"{name}.predict() before fit() must raise")
    assert est.fit(X, y) is est, f"{name}.fit() must return self"
    assert list(np.asarray(est.classes_)) == ["ant", "bee", "cat"], f"{name}.classes_ must be the sorted labels"
    assert est.n_features_in_ == X.shape[1], f"{name}.n_features_in_ must be {X.shape[1]}"
    predicted = np.asarray(est.predict(X))
    assert predicted.shape == (len(X),), f"{name}.predict() returned shape {predicted.shape}, expected ({len(X)},)"
    assert set(predicted.tolist()) <= {"ant", "bee", "cat"}, f"{name}.predict() returned labels outside classes_"
    accuracy = float(np.mean(predicted == y))
    assert accuracy >= min_accuracy, f"{name} reaches only {accuracy:.2f} training accuracy on separable data"
    proba = None
    if hasattr(est, "predict_proba"):
        proba = np.asarray(est.predict_proba(X))
        assert proba.shape == (len(X), 3), f"{name}.predict_proba() returned shape {proba.shape}, expected ({len(X)}, 3)"
        assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1, atol=1e-4), \
            f"{name}.predict_proba() rows must be finite and sum to 1"
        assert (np.asarray(est.classes_)[proba.argmax(1)] == predicted).all(), \
            f"{name}.predict() disagrees with argmax of predict_proba()"
    try:
        est.predict(X[:, :-1])
    except Exception:  # noqa: BLE001
        pass
    else:
        raise AssertionError(f"{name}.predict() must refuse features of another dimension")
    assert safe_format(est) is not None, f"{name} is only persistable as pickle; subclass headstart.sdk.Head and " \
                                         "implement _state()/_set_state(), or use a scikit-learn estimator (skops)"
    with tempfile.TemporaryDirectory() as tmp:
        record = save_head(est, tmp)
        loaded = load_head(tmp, record, build=make, trust=False)
    assert (np.asarray(loaded.predict(X)) == predicted).all(), f"{name} predicts differently after save/load"
    if proba is not None:
        assert np.allclose(np.asarray(loaded.predict_proba(X)), proba, atol=1e-5), \
            f"{name} gives other probabilities after save/load"
    return {"estimator": name, "accuracy": accuracy, "format": record["format"]}


MODALITIES = ("text", "image", "numeric")


def check_reader(spec: ReaderSpec, source: str, *, options: ReaderOptions | None = None,
                 expect_items: int | None = None, expect_labels: bool | None = None) -> dict[str, Any]:
    """Check a reader against a sample ``source`` it should read; returns ``{"items", "errors", "labels"}``.

    Rules: the spec claims the source; opening gives a source whose ``modality`` and ``has_labels`` are set;
    every item is an :class:`Item` of that modality with a non-empty ``ref``, a payload whose content key
    matches ``key`` (or no payload and an ``error`` that says why); labels are strings (none when the source
    has none); reading twice gives the same items in the same order; ``estimate_count()`` is ``None`` or a
    count >= 0; a missing path fails with a :class:`HeadstartError`, never a raw exception.
    """
    assert isinstance(spec, ReaderSpec), f"{spec!r} is not a ReaderSpec"
    name = spec.name
    assert spec.claims(source), f"reader '{name}' does not claim {source!r} (extensions, prefixes or can_read)"
    options = options or ReaderOptions()
    opened = spec.open(source, options)
    modality = getattr(opened, "modality", None)
    assert modality in MODALITIES, f"reader '{name}': source.modality is {modality!r}, expected one of {MODALITIES}"
    has_labels = getattr(opened, "has_labels", None)
    assert isinstance(has_labels, bool), f"reader '{name}': source.has_labels must be a bool, got {has_labels!r}"
    if expect_labels is not None:
        assert has_labels == expect_labels, f"reader '{name}': has_labels is {has_labels}, expected {expect_labels}"
    estimate = opened.estimate_count()
    assert estimate is None or (isinstance(estimate, int) and estimate >= 0), \
        f"reader '{name}': estimate_count() must be None or an int >= 0, got {estimate!r}"
    first = list(opened)
    assert first, f"reader '{name}' yielded no items from {source!r}"
    errors = 0
    for item in first:
        assert isinstance(item, Item), f"reader '{name}' yielded {type(item).__name__}, not an Item"
        assert isinstance(item.ref, str) and item.ref, f"reader '{name}': an item has no ref (where it came from)"
        assert item.modality == modality, f"reader '{name}': item {item.ref} has modality {item.modality!r}, " \
                                          f"the source says {modality!r}"
        if item.payload is None:
            errors += 1
            assert isinstance(item.error, str) and item.error, \
                f"reader '{name}': item {item.ref} has no payload and no error saying why"
        else:
            assert item.error is None, f"reader '{name}': item {item.ref} has a payload and an error"
            assert item.key == content_key(item.payload), \
                f"reader '{name}': item {item.ref}'s key is not the content key of its payload (use Item.make)"
        if has_labels:
            assert item.label is None or isinstance(item.label, str), \
                f"reader '{name}': item {item.ref}'s label must be a str, got {type(item.label).__name__}"
        else:
            assert item.label is None, f"reader '{name}': the source has no labels but item {item.ref} has one"
    if expect_items is not None:
        assert len(first) == expect_items, f"reader '{name}' yielded {len(first)} items, expected {expect_items}"
    again = [(it.ref, it.key, it.label) for it in spec.open(source, options)]
    assert again == [(it.ref, it.key, it.label) for it in first], \
        f"reader '{name}': reading {source!r} twice gave different items"
    missing = f"{source}.does-not-exist"
    try:
        list(spec.open(missing, options))
    except HeadstartError:
        pass
    except Exception as exc:  # noqa: BLE001 - the point is to name what leaked
        raise AssertionError(f"reader '{name}': a missing source raised {type(exc).__name__}: {exc}; raise a "
                             "HeadstartError subclass (e.g. ReaderError) with a hint instead") from None
    labels = sorted({it.label for it in first if it.label is not None})
    return {"items": len(first), "errors": errors, "labels": labels}


def check_backbone(spec: Any, *, precision: str = "fp32", probe: list[Any] | None = None,
                   home: str | None = None) -> dict[str, Any]:
    """Check a backbone: it exports to ONNX, passes the parity gate, and its probes encode well.

    ``spec``: a BackboneSpec or a reference (``"onnx:model.onnx"``). Exports into ``home`` (default: a
    temporary folder, so the user's cache is untouched). Rules: the export passes the parity gate at
    ``precision``; encoding the probe items (the spec's own probe, or the modality's default) gives one
    finite vector of ``dim`` per item, unit-norm when the spec normalises; a batch gives the same vectors as
    one item at a time; a second export is a cache hit with the same fingerprint. Returns the parity
    figures, the fingerprint and the probe count.
    """
    from pathlib import Path

    from ..backbones.export import export
    from ..backbones.preprocess import make_preprocessor
    from ..backbones.probes import default_probe, probe_arrays
    from ..backbones.resolve import resolve_backbone
    from ..backbones.runtime import Encoder
    from ..config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(home=home or tmp)
        spec = resolve_backbone(spec)
        name = spec.name
        try:
            exported = export(spec, precision, settings=settings)
        except ExportParityError as exc:
            raise AssertionError(f"backbone '{name}' fails the parity gate at {precision}: {exc.message}") from None
        assert exported.dim == spec.dim, f"backbone '{name}': export has dim {exported.dim}, the spec says {spec.dim}"
        parity = dict(exported.parity)
        again = export(spec, precision, settings=settings)
        assert again.fingerprint == exported.fingerprint and again.path == exported.path, \
            f"backbone '{name}': a second export is not a cache hit (the fingerprint is not stable)"
        if probe is None:
            if spec.probe is not None:
                probe = list(spec.probe())
            elif spec.modality == "numeric":
                pre = spec.preprocessing
                probe = probe_arrays(pre.shape, pre.dtype)
            else:
                probe = default_probe(spec.modality)
        preprocessor = make_preprocessor(spec)
        prepared = preprocessor.prepare_many(probe)
        bad = [i for i, p in enumerate(prepared) if isinstance(p, BaseException)]
        assert not bad, f"backbone '{name}': probe items {bad} fail preprocessing: {prepared[bad[0]]}"
        encoder = Encoder(exported, device="cpu", threads=1)
        batch = np.asarray(encoder.run(preprocessor.collate(prepared)))
        assert batch.shape == (len(probe), spec.dim), \
            f"backbone '{name}': {len(probe)} probe items gave shape {batch.shape}, expected ({len(probe)}, {spec.dim})"
        assert np.isfinite(batch).all(), f"backbone '{name}' produces NaN/Inf on probe items"
        if spec.normalize:
            norms = np.linalg.norm(batch, axis=1)
            assert np.allclose(norms, 1.0, atol=1e-3), \
                f"backbone '{name}' says it normalises, but probe vectors have norms {norms.min():.4f}..{norms.max():.4f}"
        single = np.concatenate([encoder.run(preprocessor.collate([p])) for p in prepared])
        worst = float(np.abs(single - batch).max())
        assert worst <= 1e-3 * max(1.0, float(np.abs(batch).max())), \
            f"backbone '{name}': a probe item's vector depends on its batch (max diff {worst:.3g}); check padding " \
            "and masking in pooling"
        return {"name": name, "fingerprint": exported.fingerprint, "dim": spec.dim, "precision": precision,
                "parity": parity, "probes": len(probe), "path": str(Path(exported.path))}
