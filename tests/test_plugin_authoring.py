"""The three ways a plugin author's head went wrong (issue: a plugin author's kit), each now caught:
a plain class saved as pickle without a word; a Head subclass whose state missed the base attributes;
a model whose head plugin failed to load reported only as an unknown head."""

from __future__ import annotations

import types

import numpy as np
import pytest

import headstart
from headstart.sdk import Head, HeadError, HeadSpec, check_head, hookimpl


def _data():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 8)) * 3
    X = np.concatenate([c + rng.standard_normal((30, 8)) for c in centres]).astype(np.float32)
    return headstart.FeatureSet.from_arrays(X, ["ant"] * 30 + ["bee"] * 30 + ["cat"] * 30)


class PlainCentroid:
    """The old docs example: a plain class with fit/predict_proba, no safe state."""

    def __init__(self, temperature=1.0):
        self.temperature = temperature

    def get_params(self, deep=True):
        return {"temperature": self.temperature}

    def set_params(self, **params):
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def fit(self, X, y):
        self.classes_, inverse = np.unique(np.asarray(y), return_inverse=True)
        self.centroids_ = np.stack([X[inverse == i].mean(0) for i in range(len(self.classes_))])
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X):
        d = -((X[:, None, :] - self.centroids_[None]) ** 2).sum(-1) / self.temperature
        e = np.exp(d - d.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(1)]


class NearestMean(Head):
    """The second attempt: a Head whose state holds only its own arrays (no classes_, no n_features_in_)."""

    def __init__(self, shrink: float = 0.0) -> None:
        self.shrink = shrink

    def _fit(self, X, y_idx):
        self.means_ = np.stack([X[y_idx == i].mean(0) for i in range(len(self.classes_))]) * (1 - self.shrink)

    def _proba(self, X):
        d = -((X[:, None, :] - self.means_[None]) ** 2).sum(-1)
        e = np.exp(d - d.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def _state(self):
        return {"means": self.means_}, {}

    def _set_state(self, arrays, meta):
        self.means_ = arrays["means"]


class Forgetful(NearestMean):
    """A head whose _set_state loses part of the fitted state: a saved model would predict differently."""

    def _set_state(self, arrays, meta):
        self.means_ = np.zeros_like(arrays["means"])


def _plugin(name: str, factory):
    module = types.ModuleType(f"plugin_{name}")

    @hookimpl
    def register_heads(register):
        register(HeadSpec(name=name, factory=factory, description="test head"))

    module.register_heads = register_heads
    return module


def test_a_head_only_pickle_could_save_is_refused_before_work_with_the_fix(register_plugin, tmp_path):
    register_plugin(_plugin("plain", PlainCentroid), "plain_plugin")
    with pytest.raises(HeadError, match="no safe saved form") as info:
        headstart.train(_data(), "plain", out=tmp_path / "m")
    assert "_state()/_set_state()" in info.value.hint and "--allow-pickle" in info.value.hint
    assert not (tmp_path / "m").exists()
    with pytest.raises(AssertionError, match="only persistable as pickle"):
        check_head(PlainCentroid)
    saved = headstart.train(_data(), "plain", out=tmp_path / "p", allow_pickle=True)  # the deliberate opt-in
    assert saved.model.manifest["head"]["format"] == "pickle"
    with pytest.raises(headstart.UntrustedModelError):
        headstart.load_model(tmp_path / "p")


def test_a_head_subclass_needs_to_save_only_its_own_state(register_plugin, tmp_path):
    register_plugin(_plugin("nearest_mean", NearestMean), "nm_plugin")
    data = _data()
    result = headstart.train(data, "nearest_mean", out=tmp_path / "m")
    loaded = headstart.load_model(tmp_path / "m")
    assert list(loaded.head.classes_) == ["ant", "bee", "cat"] and loaded.head.n_features_in_ == 8
    assert loaded.predict(data).labels == result.model.predict(data).labels
    assert check_head(NearestMean)["format"] == "safetensors"


def test_train_loads_the_saved_model_back_and_refuses_one_that_predicts_differently(register_plugin, tmp_path):
    register_plugin(_plugin("forgetful", Forgetful), "forgetful_plugin")
    (tmp_path / "m").mkdir()
    with pytest.raises(HeadError, match="predicts differently"):
        headstart.train(_data(), "forgetful", out=tmp_path / "m")
    assert list((tmp_path / "m").iterdir()) == []  # nothing was swapped in


def test_a_model_whose_head_plugin_failed_to_load_names_the_failure(register_plugin, headstart_engine, tmp_path):
    register_plugin(_plugin("nearest_mean", NearestMean), "nm_plugin")
    headstart.train(_data(), "nearest_mean", out=tmp_path / "m")
    headstart_engine.unregister_plugin("nm_plugin")
    broken = types.ModuleType("broken_nm")

    @hookimpl
    def register_heads(register):
        raise RuntimeError("cannot import its numerical backend")

    broken.register_heads = register_heads
    register_plugin(broken, "nm_plugin", distribution="headstart-nearest-mean", version="1.2.0")
    with pytest.raises(headstart.UnknownNameError) as info:
        headstart.load_model(tmp_path / "m")
    message = str(info.value)
    assert "unknown head 'nearest_mean'" in message and "failed to load" in message
    assert "headstart-nearest-mean 1.2.0" in message and "cannot import its numerical backend" in message
