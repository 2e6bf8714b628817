"""Head plugins: the scikit-learn contract (conformance kit), safe persistence, bad inputs."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from headstart import get_engine
from headstart.engine.errors import ConfigError, DataError, HeadError, IntegrityError, NotFittedError, UntrustedModelError
from headstart.engine.heads.base import Head
from headstart.engine.heads.persist import load_head, save_head
from headstart.engine.heads.resolve import build_head
from headstart.engine.heads.spec import HeadSpec
from headstart.engine.testing.conformance import check_head, conformance_data


def _spec(name: str) -> HeadSpec:
    return get_engine().catalog.get("head", name).spec


@pytest.mark.parametrize("name,arg", [("linear", None), ("mlp", None), ("knn", None),
                                      ("sklearn", "LogisticRegression"), ("sklearn", "sklearn.svm.SVC")])
def test_builtin_heads_pass_conformance(name, arg):
    report = check_head(_spec(name), arg=arg)
    assert report["accuracy"] >= 0.9
    assert report["format"] == ("skops" if name == "sklearn" else "safetensors")


def test_conformance_catches_a_broken_head():
    class Eager(Head):  # sets a fitted attribute in __init__
        def __init__(self, *, k: int = 1) -> None:
            self.k = k
            self.weights_ = np.zeros(3)

    with pytest.raises(AssertionError, match="__init__ sets fitted attributes"):
        check_head(Eager)

    class Unsafe:  # fits, but only persistable as pickle
        def __init__(self) -> None:
            pass

        def get_params(self, deep=True):
            return {}

        def set_params(self, **p):
            return self

        def fit(self, X, y):
            self.classes_, self.n_features_in_ = np.unique(y), X.shape[1]
            return self

        def predict(self, X):
            if X.shape[1] != self.n_features_in_:
                raise ValueError("dim")
            return np.full(len(X), self.classes_[0])

    with pytest.raises(AssertionError):
        check_head(Unsafe)


def test_heads_are_sklearn_estimators_for_clone_and_params():
    from sklearn.base import clone, is_classifier

    head, _ = build_head("mlp(hidden=(32, 16), dropout=0.0)")
    twin = clone(head)
    assert twin.get_params() == head.get_params() and twin is not head
    assert is_classifier(head)
    assert head.set_params(dropout=0.5) is head and head.dropout == 0.5
    with pytest.raises(ConfigError, match="no parameter 'nope'"):
        head.set_params(nope=1)
    with pytest.raises(NotFittedError):
        head.predict(np.zeros((2, 3), np.float32))


def test_plugin_modules_import_cheaply():
    import subprocess
    import sys

    code = ("import sys, headstart.plugins.heads.linear, headstart.plugins.heads.mlp, headstart.plugins.heads.knn, headstart.plugins.heads.sklearn_head;"
            "print(sorted(m for m in ('torch','sklearn','faiss','onnxruntime','scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_parameter_constraints_say_what_scikit_learn_says_without_importing_it():
    """headstart.sdk.Interval/Options give scikit-learn's verdicts and messages; scikit-learn's own
    constraint objects still work (their check is scikit-learn's)."""
    from numbers import Integral, Real

    from sklearn.utils._param_validation import Interval as SkInterval
    from sklearn.utils._param_validation import StrOptions, validate_parameter_constraints

    from headstart.sdk import Interval, InvalidParameterError, Options

    from headstart.engine.heads.constraints import validate_constraints

    ours = {"l2": [Interval(Real, 0, None, closed="left"), None], "k": [Interval(Integral, 1, None, closed="left")],
            "frac": [Interval(Real, 0, 1, closed="left")], "lr": [Interval(Real, 0, None, closed="neither")],
            "p": [Interval(Real, 0, 1, closed="both")], "metric": [Options({"cosine", "ip"})],
            "class_weight": [None, Options({"balanced"}), dict], "device": [str]}
    theirs = {name: [SkInterval(c.type, c.left, c.right, closed=c.closed) if isinstance(c, Interval)
                     else StrOptions(set(c.values)) if isinstance(c, Options) else c for c in cs]
              for name, cs in ours.items()}
    values = {"l2": [0, 0.5, None, -1.0, "x", True], "k": [1, 3, 0, 1.5, np.int64(2)], "frac": [0.0, 0.99, 1.0, -0.1],
              "lr": [1e-3, 0.0, -1], "p": [0, 1, 1.01], "metric": ["cosine", "l2", 3],
              "class_weight": [None, "balanced", {"a": 1}, "other", 3], "device": ["cpu", 3]}
    def options_sorted(message: str | None) -> str | None:  # scikit-learn lists a set's options in hash order
        return None if message is None else re.sub(r"\{([^}]*)\}", lambda m: "{" + ", ".join(
            sorted(m.group(1).split(", "))) + "}", message)

    checked = 0
    for name, tries in values.items():
        for value in tries:
            try:
                validate_parameter_constraints(theirs, {name: value}, caller_name="Head")
                expected = None
            except ValueError as exc:
                expected = str(exc)
            try:
                validate_constraints(ours, {name: value}, "Head")
                got = None
            except InvalidParameterError as exc:
                assert isinstance(exc, ValueError) and isinstance(exc, TypeError)
                got = str(exc)
            assert options_sorted(got) == options_sorted(expected), (name, value)
            checked += expected is not None
    assert checked == 14  # the invalid tries: their messages were compared, not only the passes
    with pytest.raises(ValueError, match="'k' parameter of Head must be an int in the range"):
        validate_constraints({"k": [SkInterval(Integral, 1, None, closed="left")]}, {"k": 0}, "Head")


def test_linear_head_matches_sklearn_and_chooses_l2():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    centres = rng.standard_normal((4, 32))
    y = rng.integers(0, 4, 1200)
    X = (centres[y] + 1.5 * rng.standard_normal((1200, 32))).astype(np.float32)
    head, _ = build_head("linear")
    head.fit(X[:900], y[:900])
    ours = head.score(X[900:], y[900:])
    theirs = LogisticRegression(max_iter=1000).fit(X[:900], y[:900]).score(X[900:], y[900:])
    assert ours >= theirs - 0.01
    assert head.l2_path_ and head.l2_ > 0
    fixed = build_head("linear(l2=0.01, class_weight='balanced')")[0].fit(X[:900], y[:900])
    assert fixed.l2_path_ == [] and fixed.l2_ == 0.01


def test_linear_head_refuses_cuda_without_gpu():
    import torch

    if torch.cuda.is_available():
        head = build_head("linear(device='cuda')")[0].fit(*conformance_data())
        assert head.score(*conformance_data()) > 0.9
    else:
        with pytest.raises(HeadError, match="no CUDA GPU"):
            build_head("linear(device='cuda')")[0].fit(*conformance_data())


def test_mlp_stops_early_and_knn_weights():
    X, y = conformance_data(n_per_class=60)
    mlp = build_head("mlp(hidden=(16,), lr=0.05, batch_size=16, max_epochs=200, patience=2)")[0].fit(X, y)
    assert mlp.n_epochs_ < 200
    for params in ("k=5, weights='uniform'", "k=5, metric='ip', weights='distance'", "k=500"):
        knn = build_head(f"knn({params})")[0].fit(X, y)
        assert knn.score(X, y) > 0.9
    with pytest.raises(ConfigError):
        build_head("knn(metric='l1')")[0].fit(X, y)


def test_sklearn_head_is_resolved_safely():
    assert type(build_head("sklearn:sklearn.svm.SVC(C=2.0)")[0]).__name__ == "SVC"
    assert build_head("sklearn:LogisticRegression(C=2.0)")[0].C == 2.0
    for bad, match in [("sklearn:os.system", "only classes from scikit-learn"),
                       ("sklearn:sklearn.linear_model._base.LinearModel", "private"),
                       ("sklearn:LinearRegression", "not a scikit-learn classifier"),
                       ("sklearn:LogisticRegresion", "did you mean 'LogisticRegression'"),
                       ("sklearn:LogisticRegression(C=__import__('os'))", "not a literal"),
                       ("sklearn:LogisticRegression(bogus=1)", "no parameter"),
                       ("sklearn", "needs an argument"),
                       ("linear(nope=1)", "cannot be built")]:
        with pytest.raises(ConfigError, match=match):
            build_head(bad)


def test_nan_and_inf_features_are_refused_naming_rows():
    X, y = conformance_data()
    X[3, 0], X[7, 2] = np.nan, np.inf
    for name in ("linear", "mlp", "knn"):
        with pytest.raises(DataError, match="row 3, row 7"):
            build_head(name)[0].fit(X, y)


def test_one_class_is_refused():
    X, _ = conformance_data()
    with pytest.raises(DataError, match="only one class"):
        build_head("linear")[0].fit(X, np.full(len(X), "a"))


def test_persisted_files_are_checked(tmp_path: Path):
    X, y = conformance_data()
    head = build_head("linear(l2=0.001)")[0].fit(X, y)
    record = save_head(head, tmp_path)
    (tmp_path / "head.safetensors").write_bytes((tmp_path / "head.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(IntegrityError, match="does not match its manifest"):
        load_head(tmp_path, record, build=lambda: build_head("linear")[0])


class _Evil:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_head_is_refused_without_trust_and_runs_no_code(tmp_path: Path):
    marker = tmp_path / "code-ran"
    data = pickle.dumps(_Evil(marker))
    import hashlib

    (tmp_path / "head.pkl").write_bytes(data)
    record = {"format": "pickle", "files": {"head.pkl": hashlib.sha256(data).hexdigest()}}
    with pytest.raises(UntrustedModelError, match="pickle"):
        load_head(tmp_path, record)
    assert not marker.exists()
    load_head(tmp_path, record, trust=True)  # the payload is real: trusting it runs it
    assert marker.exists()
