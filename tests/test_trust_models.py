"""Issue 11, model folders and heads: crafted skops gadgets, confined paths (FIFO, device, '..', absolute,
symlink out), model folders that change as a unit (a real SIGKILL at every write step), outputs refused
before any work, bad head values, damaged head files, onnx: sidecars, finetune --resume without a checkpoint."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from headstart.engine.errors import (BackboneError, ConfigError, HeadError, HeadstartError, IntegrityError,
                                     UnsafeModelError, UntrustedModelError)
from headstart.engine.heads.features import FeatureSet
from headstart.engine.train.api import train
from headstart.engine.train.model import Model, load_model

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "support-tickets" / "train.csv"
TEST = ROOT / "examples" / "support-tickets" / "test.csv"
NEW = ROOT / "examples" / "support-tickets" / "new.txt"


def _cli(*args: str, home: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HEADSTART_HOME": str(home or os.environ["HEADSTART_HOME"])}
    return subprocess.run([sys.executable, "-m", "headstart", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A clean refusal: exit != 0, exactly one `error:` line, no traceback, each needle in stderr."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def _features(n: int = 120, dim: int = 8, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim)).astype(np.float32)
    y = np.array(["a", "b", "c"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)]
    return FeatureSet.from_arrays(X, y)


def _rehash(model: Path, name: str) -> None:
    """Record ``name``'s current sha256 in the manifest, so only the content checks can stop it."""
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["head"]["files"][name] = hashlib.sha256((model / name).read_bytes()).hexdigest()
    (model / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def skops_model(tmp_path_factory, session_home) -> Path:
    """A scikit-learn head (head.skops) on MiniLM features of the shipped example."""
    out = tmp_path_factory.mktemp("trust") / "lr"
    with pytest.MonkeyPatch.context() as patch:  # module scope: restore the environment afterwards
        patch.setenv("HEADSTART_HOME", str(session_home))
        train(str(TRAIN), "sklearn:LogisticRegression(max_iter=1000)", backbone="minilm-l6", out=out, progress=False)
    return out


# -- 1. skops gadgets ------------------------------------------------------------------------------
_ids = itertools.count(10**9)


def _json(value) -> dict:
    return {"__class__": type(value).__name__, "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(value), "is_json": True, "__id__": next(_ids)}


def _seq(kind: str, items: list) -> dict:
    return {"__class__": kind, "__module__": "builtins", "__loader__": "TupleNode" if kind == "tuple" else "ListNode",
            "content": items, "__id__": next(_ids)}


def _call(module: str, name: str, *args: dict) -> dict:
    """A skops reduce-constructor node: loading it calls ``module.name(*args)``."""
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": _seq("tuple", list(args)), "__id__": next(_ids)}


def _gadget(kind: str, marker: Path) -> tuple[dict, str]:
    """(node, the type skops reports) for a gadget that writes ``marker`` (scipy adds '.mtx')."""
    m = str(marker)
    return {
        "builtins": (_call("builtins", "eval", _json(f"open({m!r}, 'w').write('ran')")), "builtins.eval"),
        "numpy": (_call("numpy", "savetxt", _json(m), _seq("list", [_json(1.0)])), "numpy.savetxt"),
        "scipy": (_call("scipy.io", "mmwrite", _json(m), _seq("list", [_seq("list", [_json(1.0)])])),
                  "scipy.io.mmwrite"),
        "sklearn": (_call("sklearn.datasets", "dump_svmlight_file", _seq("list", [_seq("list", [_json(1.0)])]),
                          _seq("list", [_json(1)]), _json(m)), "sklearn.datasets.dump_svmlight_file"),
    }[kind]


def _plant(data: bytes, node: dict) -> bytes:
    """``data`` (a head.skops) with the estimator's ``verbose`` attribute replaced by ``node``."""
    src, buffer = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for name in src.namelist():
            content = src.read(name)
            if name == "schema.json":
                schema = json.loads(content)
                assert "verbose" in schema["content"]["content"]
                schema["content"]["content"]["verbose"] = node
                content = json.dumps(schema).encode()
            out.writestr(name, content)
    return buffer.getvalue()


def _ran(marker: Path) -> bool:
    return any(marker.parent.glob(marker.name + "*"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", ["builtins", "numpy", "scipy", "sklearn"])
def test_skops_gadget_is_refused_by_eval_and_predict_and_runs_nothing(kind: str, skops_model: Path,
                                                                        tmp_path: Path) -> None:
    import skops.io

    # the gadget is live: loading it the way a prefix rule allowed runs it
    probe = tmp_path / "probe-ran"
    live = _plant((skops_model / "head.skops").read_bytes(), _gadget(kind, probe)[0])
    skops.io.loads(live, trusted=skops.io.get_untrusted_types(data=live))
    assert _ran(probe)

    marker = tmp_path / "code-ran"
    node, type_name = _gadget(kind, marker)
    model = tmp_path / "evil"
    shutil.copytree(skops_model, model)
    (model / "head.skops").write_bytes(_plant((model / "head.skops").read_bytes(), node))
    _rehash(model, "head.skops")
    for args in (("eval", str(model), str(TEST)), ("predict", str(model), str(NEW), "-o", str(tmp_path / "p.csv"))):
        _refused(_cli(*args), type_name, "get_untrusted_types", "--trust-pickle")
        assert not _ran(marker)
    with pytest.raises(UntrustedModelError, match=type_name.replace(".", r"\.")):
        load_model(model)
    assert not _ran(marker) and not (tmp_path / "p.csv").exists()


def _negate(X):  # a plain function: skops stores it by name and trusts it only when told to
    return -X


def _sklearn_heads():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier, StackingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return {
        "LogisticRegression": LogisticRegression(max_iter=500),
        "SVC": SVC(),
        "RandomForestClassifier": RandomForestClassifier(n_estimators=5, random_state=0),
        "HistGradientBoostingClassifier": HistGradientBoostingClassifier(max_iter=5),
        "KNeighborsClassifier": KNeighborsClassifier(n_neighbors=3),
        "MLPClassifier": MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0),
        "CalibratedClassifierCV": CalibratedClassifierCV(LogisticRegression(), cv=2),
        "Pipeline": make_pipeline(StandardScaler(), LogisticRegression()),
        "StackingClassifier": StackingClassifier([("lr", LogisticRegression()), ("svc", SVC())],
                                                 final_estimator=LogisticRegression(), cv=2),
    }


def test_real_sklearn_heads_load_without_trust(tmp_path: Path) -> None:
    import warnings

    from headstart.engine.heads.spec import HeadRef
    from headstart.engine.train.model import make_manifest

    fs = _features()
    for name, estimator in _sklearn_heads().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimator.fit(fs.vectors, np.asarray(fs.labels))
        manifest = make_manifest(HeadRef("sklearn", name), estimator, fs, {}, {})
        Model(estimator, manifest).save(tmp_path / name)
        loaded = load_model(tmp_path / name)
        assert loaded.manifest["head"]["format"] == "skops"
        np.testing.assert_array_equal(loaded.head.predict(fs.vectors), estimator.predict(fs.vectors), err_msg=name)
    # trained through the head plugin too (the manifest names the class the trust list admits)
    result = train(fs, "sklearn:RandomForestClassifier(n_estimators=3)", out=tmp_path / "rf")
    np.testing.assert_array_equal(load_model(tmp_path / "rf").head.predict(fs.vectors),
                                  result.model.head.predict(fs.vectors))


def test_untrusted_type_needs_the_explicit_opt_in(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from headstart.engine.heads.spec import HeadRef
    from headstart.engine.train.model import make_manifest

    fs = _features()
    head = make_pipeline(FunctionTransformer(_negate), LogisticRegression()).fit(fs.vectors, np.asarray(fs.labels))
    Model(head, make_manifest(HeadRef("sklearn", "Pipeline"), head, fs, {}, {})).save(tmp_path / "m")
    with pytest.raises(UntrustedModelError, match="_negate") as info:
        load_model(tmp_path / "m")
    assert "get_untrusted_types(file=" in info.value.hint and "trust=True" in info.value.hint
    assert (load_model(tmp_path / "m", trust=True).head.predict(fs.vectors) == head.predict(fs.vectors)).all()


# -- 2. paths named by a manifest or a sidecar ------------------------------------------------------
def _point_training_keys(model: Path, name: str) -> None:
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["training_keys"]["file"] = name
    (model / "manifest.json").write_text(json.dumps(manifest))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.timeout(900)
def test_training_keys_path_must_be_a_bounded_regular_file_inside(skops_model: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.npy"
    outside.write_bytes((skops_model / "training_keys.npy").read_bytes())
    cases = {"fifo": "FIFO", "dotdot": "leaves the folder", "absolute": "leaves the folder",
             "dev-zero": "leaves the folder", "link-out": "outside the folder", "link-dev": "outside the folder",
             "folder": "a folder"}
    for case, needle in cases.items():
        model = _copy(skops_model, tmp_path / case)
        if case == "fifo":
            os.mkfifo(model / "keys.fifo")
            _point_training_keys(model, "keys.fifo")
        elif case == "dotdot":
            _point_training_keys(model, "../../../../../../../../etc/passwd")
        elif case == "absolute":
            _point_training_keys(model, str(outside))
        elif case == "dev-zero":
            _point_training_keys(model, "/dev/zero")
        elif case == "link-out":
            (model / "training_keys.npy").unlink()
            (model / "training_keys.npy").symlink_to(outside)
        elif case == "link-dev":
            (model / "zero").symlink_to("/dev/zero")
            _point_training_keys(model, "zero")
        else:
            (model / "sub").mkdir()
            _point_training_keys(model, "sub")
        with pytest.raises(UnsafeModelError, match=needle):
            load_model(model)
        # the command returns promptly with a one-line error (a FIFO read would block forever)
        _refused(_cli("eval", str(model), str(TEST), timeout=120), "training_keys.file", needle)


def test_head_and_manifest_paths_are_confined(skops_model: Path, tmp_path: Path) -> None:
    outside = tmp_path / "head.skops"
    outside.write_bytes((skops_model / "head.skops").read_bytes())
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()

    model = _copy(skops_model, tmp_path / "dotdot")
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["head"]["files"] = {"head.skops": manifest["head"]["files"]["head.skops"], "../head.skops": digest}
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsafeModelError, match="leaves the folder"):
        load_model(model)

    model = _copy(skops_model, tmp_path / "link")
    (model / "head.skops").unlink()
    (model / "head.skops").symlink_to(outside)
    with pytest.raises(UnsafeModelError, match="outside the folder"):
        load_model(model)

    model = _copy(skops_model, tmp_path / "fifo-head")
    (model / "head.skops").unlink()
    os.mkfifo(model / "head.skops")
    _refused(_cli("predict", str(model), str(NEW), "-o", str(tmp_path / "p.csv"), timeout=120), "FIFO")

    model = _copy(skops_model, tmp_path / "fifo-manifest")
    (model / "manifest.json").unlink()
    os.mkfifo(model / "manifest.json")
    _refused(_cli("eval", str(model), str(TEST), timeout=120), "FIFO")


def _numeric_onnx(folder: Path, dim: int = 6, sidecar: dict | None = None) -> Path:
    """A tiny numeric ONNX graph (x: (batch, steps, 4) -> mean over steps @ W: (batch, dim)) and its sidecar."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, dim)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0), helper.make_node("MatMul", ["m", "w"], ["y"])],
        "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", dim])],
        [w, numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")])
    model = folder / "seq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(model))
    meta = sidecar if sidecar is not None else {
        "modality": "numeric", "preprocessing": {"input_name": "x", "shape": [None, 4], "dtype": "float32"}}
    model.with_suffix(".headstart.json").write_text(json.dumps(meta))
    return model


def test_onnx_sidecar_paths_and_fields(tmp_path: Path, headstart_home: Path) -> None:
    from headstart.engine.backbones.resolve import resolve_backbone

    assert resolve_backbone(f"onnx:{_numeric_onnx(tmp_path / 'ok')}").dim == 6
    (tmp_path / "tok.json").write_text("{}")
    text = {"modality": "text", "preprocessing": {"tokenizer": None}}
    for case, tokenizer, needle in [("dotdot", "../../../../../../etc/passwd", "leaves the folder"),
                                    ("absolute", str(tmp_path / "tok.json"), "leaves the folder"),
                                    ("link", "tok-link.json", "outside the folder"),
                                    ("fifo", "tok.fifo", "FIFO")]:
        folder = tmp_path / case
        model = _numeric_onnx(folder, sidecar={**text, "preprocessing": {"tokenizer": tokenizer}})
        if case == "link":
            (folder / "tok-link.json").symlink_to(tmp_path / "tok.json")
        if case == "fifo":
            os.mkfifo(folder / "tok.fifo")
        with pytest.raises(UnsafeModelError, match=needle):
            resolve_backbone(f"onnx:{model}")
    # a sidecar that is a FIFO, or huge, is refused before it is read
    model = _numeric_onnx(tmp_path / "fifo-side")
    model.with_suffix(".headstart.json").unlink()
    os.mkfifo(model.with_suffix(".headstart.json"))
    with pytest.raises(UnsafeModelError, match="FIFO"):
        resolve_backbone(f"onnx:{model}")
    # wrongly typed fields name the file and the field
    for meta, field in [({"modality": "numeric", "dim": "six"}, "dim"),
                        ({"modality": "numeric", "preprocessing": {"shape": "abc"}}, "shape"),
                        ({"modality": "numeric", "preprocessing": {"pad_value": "zero"}}, "pad_value"),
                        ({"modality": 3}, "modality")]:
        model = _numeric_onnx(tmp_path / f"typed-{field}", sidecar=meta)
        with pytest.raises(ConfigError, match=f"headstart.json.*'{field}'"):
            resolve_backbone(f"onnx:{model}")


def test_external_data_must_be_a_bounded_regular_file(tmp_path: Path, headstart_home: Path) -> None:
    import onnx

    from headstart.engine.backbones.export import export

    for case in ("fifo", "dev-link"):
        folder = tmp_path / case
        model = _numeric_onnx(folder)
        proto = onnx.load(str(model))
        onnx.save(proto, str(model), save_as_external_data=True, location="seq.data", size_threshold=16)
        (folder / "seq.data").unlink()
        if case == "fifo":
            os.mkfifo(folder / "seq.data")
        else:
            (folder / "seq.data").symlink_to("/dev/zero")
        with pytest.raises(UnsafeModelError, match="FIFO|outside the (model )?folder"):
            export(f"onnx:{model}")


def test_onnx_file_errors_name_the_file(tmp_path: Path, headstart_home: Path) -> None:
    from headstart.engine.backbones.resolve import resolve_backbone

    empty = _numeric_onnx(tmp_path / "empty")
    empty.write_bytes(b"")
    garbage = _numeric_onnx(tmp_path / "garbage")
    garbage.write_bytes(b"this is not an onnx graph at all" * 10)
    for model in (empty, garbage):
        with pytest.raises(BackboneError, match=str(model)):
            resolve_backbone(f"onnx:{model}")
    mismatch = _numeric_onnx(tmp_path / "dim", sidecar={
        "modality": "numeric", "dim": 7, "preprocessing": {"input_name": "x", "shape": [None, 4]}})
    with pytest.raises(ConfigError, match=r'"dim" is 7.*dimension 6'):
        resolve_backbone(f"onnx:{mismatch}")
    with pytest.raises(ConfigError, match="names no ONNX file"):
        resolve_backbone("onnx:")
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("text,label\nhello,a\n")
    for ref, needle in ((f"onnx:{garbage}", str(garbage)), ("onnx:", "names no ONNX file")):
        proc = _cli("embed", str(csv_file), "-b", ref, home=headstart_home)
        _refused(proc, needle)
        assert "report it to the plugin" not in proc.stderr


# -- 3. a model folder changes as a unit --------------------------------------------------------------
KILLER = textwrap.dedent("""
    # Imports once, then for each N read from stdin forks a writer that SIGKILLs itself on entry to
    # its N-th filesystem step of the save (every write, fsync, file rename, folder exchange/rename/rmtree).
    import os, signal, sys
    import numpy as np
    import headstart.engine.store.atomic as atomic
    import headstart.engine.train.model_folder as model_folder
    from headstart.engine.heads.features import FeatureSet
    from headstart.engine.train.api import train

    path, head = sys.argv[1], sys.argv[2]
    steps, kill_at = [0], [0]

    def step(name):
        steps[0] += 1
        if steps[0] == kill_at[0]:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(obj, names):
        for name in names:
            real = getattr(obj, name)
            setattr(obj, name, lambda *a, _real=real, _name=name: (step(_name), _real(*a))[1])

    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 8)).astype(np.float32)
    y = np.array(["a", "b", "c"])[(X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)]
    features = FeatureSet.from_arrays(X, y)
    train(features, head)  # warm up (plugins, imports) without saving, so each forked writer starts at once
    wrap(atomic.FS, ["write", "fsync", "replace"])
    wrap(model_folder.OPS, ["exchange", "rename", "rmtree"])
    print("ready", flush=True)
    for line in sys.stdin:
        kill_at[0] = int(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                train(features, head, out=path)
                code = 0
            except BaseException:
                import traceback
                traceback.print_exc()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(f"{kill_at[0]} {status}", flush=True)
""")


@pytest.mark.timeout(900)
def test_kill_at_every_step_of_a_save_leaves_the_old_or_the_new_model(tmp_path: Path) -> None:
    fs = _features()
    path = tmp_path / "models" / "m"
    train(fs, "sklearn:LogisticRegression", out=path)
    old_files = sorted(os.listdir(path))
    old_pred = load_model(path).head.predict(fs.vectors)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    writer = subprocess.Popen([sys.executable, "-c", KILLER, str(path), "knn(k=3)"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    seen, kill_at = set(), 1
    try:
        assert writer.stdout.readline().strip() == "ready"
        while True:
            writer.stdin.write(f"{kill_at}\n")
            writer.stdin.flush()
            reported, status = map(int, writer.stdout.readline().split())
            assert reported == kill_at
            model = load_model(path)  # always loadable
            files = sorted(os.listdir(path))
            if model.manifest["head"]["format"] == "skops":
                assert files == old_files and (model.head.predict(fs.vectors) == old_pred).all()
                seen.add("old")
            else:
                assert model.manifest["head"]["format"] == "safetensors" and "head.skops" not in files, files
                assert model.manifest["head"]["name"] == "knn"
                seen.add("new")
            if os.WIFEXITED(status):
                assert os.WEXITSTATUS(status) == 0 and model.manifest["head"]["name"] == "knn"
                break
            assert os.WTERMSIG(status) == signal.SIGKILL
            kill_at += 1
    finally:
        writer.stdin.close()
        writer.wait(60)
    assert seen == {"old", "new"} and kill_at > 10, (seen, kill_at)
    print(f"killed at each of {kill_at - 1} steps, then saved")
    # the last (clean) run removed what killed writers left behind
    assert os.listdir(tmp_path / "models") == ["m"], os.listdir(tmp_path / "models")


def test_train_refuses_a_file_or_a_foreign_folder_before_any_work(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = tmp_path / "my-photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    for out, needle in ((folder, "not a headstart model"), (a_file, "is a file"),
                        (a_file / "model", "which is a file")):
        proc = _cli("train", str(TRAIN), "-b", "minilm-l6", "-o", str(out), home=home)
        _refused(proc, needle)
        assert not (home / "features").exists()  # refused before embedding anything
    assert os.listdir(folder) == ["holiday.jpg"] and a_file.read_text() == "keep me"
    with pytest.raises(ConfigError, match="not a headstart model"):
        train(_features(), "knn", out=folder)
    from headstart.engine.train.api import sweep

    with pytest.raises(ConfigError, match="is a file"):
        sweep(_features(), ["knn", "linear"], save_best=a_file)
    assert a_file.read_text() == "keep me"


def test_long_output_names_work(tmp_path: Path) -> None:
    from headstart.engine.store.atomic import temp_path_for, write_bytes_atomic

    name = "m" * 244
    out = tmp_path / name
    for head in ("knn", "linear"):  # the second save replaces the first
        train(_features(), head, out=out)
    assert load_model(out).manifest["head"]["name"] == "linear"
    assert len(temp_path_for(out).name.encode()) <= 255 and temp_path_for(out).name != temp_path_for(out).name
    write_bytes_atomic(tmp_path / ("é" * 127), b"x")  # 254 bytes of UTF-8
    assert (tmp_path / ("é" * 127)).read_bytes() == b"x"


# -- 4. values -------------------------------------------------------------------------------------
BAD_HEADS = [("sklearn:LogisticRegression(C=-1)", "'C'"),
             ("sklearn:StackingClassifier(estimators=[])", "'estimators'"),
             ("mlp(lr=-1, dropout=1.5)", "'dropout'"),
             ("mlp(lr=-1)", "'lr'"),
             ("mlp(hidden=(100000, 100000))", "GiB"),
             ("linear(l2=-5)", "'l2'"),
             ("linear(max_iter=-3, tol=-1)", "'max_iter'"),
             ("linear(tol=-1)", "'tol'"),
             ("knn(k=0)", "'k'")]


@pytest.mark.timeout(900)
def test_bad_head_values_are_refused_before_any_work(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for ref, needle in BAD_HEADS:
        proc = _cli("train", str(TRAIN), "-b", "minilm-l6", "--head", ref, "-o", str(tmp_path / "m"), home=home)
        _refused(proc, needle)
        assert not (home / "features").exists() and not (tmp_path / "m").exists(), ref
    # the same checks guard direct use of a head class (API users, third-party code)
    from headstart.plugins.heads.linear import LinearHead
    from headstart.plugins.heads.mlp import MLPHead

    with pytest.raises(ConfigError, match="'l2'"):
        LinearHead(l2=-5).fit(_features().vectors, _features().labels)
    with pytest.raises(ConfigError, match="GiB"):
        MLPHead(hidden=(4096,)).set_params(hidden=(60000, 60000)).fit(_features().vectors, _features().labels)


def test_third_party_head_gets_the_same_checks(tmp_path: Path) -> None:
    from headstart.engine.heads.base import Head
    from headstart.engine.heads.resolve import build_head
    from headstart.engine.heads.spec import HeadSpec
    from headstart.engine.plugins import get_engine

    class Centroid(Head):
        def __init__(self, *, shrink: float = 0.0) -> None:
            self.shrink = shrink

        @classmethod
        def _param_constraints(cls):
            from numbers import Real

            from sklearn.utils._param_validation import Interval

            return {"shrink": [Interval(Real, 0, 1, closed="both")]}

    engine = get_engine()
    engine.catalog.registrar("head", "tests")(HeadSpec(name="centroid-test", factory=Centroid))
    build_head("centroid-test(shrink=0.5)", engine)
    with pytest.raises(ConfigError, match="'shrink'"):
        build_head("centroid-test(shrink=2)", engine)


def test_damaged_head_files_and_manifests_name_the_file(skops_model: Path, tmp_path: Path) -> None:
    fs = _features()
    train(fs, "linear", out=tmp_path / "linear")

    model = _copy(skops_model, tmp_path / "bad-skops")
    (model / "head.skops").write_bytes(b"PK\x03\x04 not really a zip")
    _rehash(model, "head.skops")
    with pytest.raises(HeadError, match="head.skops"):
        load_model(model)
    _refused(_cli("eval", str(model), str(TEST)), "head.skops")

    model = _copy(tmp_path / "linear", tmp_path / "bad-safetensors")
    (model / "head.safetensors").write_bytes(b"\xff" * 64)
    _rehash(model, "head.safetensors")
    with pytest.raises(HeadError, match="head.safetensors"):
        load_model(model)

    model = _copy(tmp_path / "linear", tmp_path / "wrong-arrays")
    from safetensors.numpy import save

    (model / "head.safetensors").write_bytes(save({"other": np.zeros(3, np.float32)}))
    _rehash(model, "head.safetensors")
    with pytest.raises(HeadError, match="do not fit"):
        load_model(model)

    for damage, needle in [(lambda m: m.pop("head"), "no 'head'"), (lambda m: m.update(head=[1]), "no 'head'"),
                           (lambda m: m["head"].update(files="x"), "head.files"),
                           (lambda m: m["head"]["files"].pop("head.json"), "head.json"),
                           (lambda m: m["head"].update(format="zip"), "unknown head format"),
                           (lambda m: m.update(classes="abc"), "'classes'")]:
        model = tmp_path / "damaged"
        shutil.rmtree(model, ignore_errors=True)
        _copy(tmp_path / "linear", model)
        manifest = json.loads((model / "manifest.json").read_text())
        damage(manifest)
        (model / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(HeadstartError, match=needle) as info:
            load_model(model)
        assert "manifest.json" in info.value.message or needle == "unknown head format"
    (model / "manifest.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="manifest.json"):
        load_model(model)


# -- 5. finetune --resume on a folder without a checkpoint -----------------------------------------
def test_finetune_resume_without_a_checkpoint_refuses_and_keeps_the_model(skops_model: Path, tmp_path: Path) -> None:
    model = _copy(skops_model, tmp_path / "finished")
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    proc = _cli("finetune", str(TRAIN), "-b", "minilm-l6", "-o", str(model), "--resume", "--epochs", "1")
    _refused(proc, "no fine-tuning checkpoint")
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    load_model(model)
    empty = tmp_path / "new"
    _refused(_cli("finetune", str(TRAIN), "-b", "minilm-l6", "-o", str(empty), "--resume", "--epochs", "1"),
             "no fine-tuning checkpoint")
    assert not empty.exists()


@pytest.mark.timeout(900)
def test_cli_train_killed_at_each_rename_keeps_the_old_model(skops_model: Path, tmp_path: Path) -> None:
    """`headstart train -o EXISTING` under strace, SIGKILLed on entry to the N-th rename (files inside the
    staging folder) and to the exchange that swaps the folder in: the old model stays whole each time."""
    model = _copy(skops_model, tmp_path / "m")
    old = sorted(os.listdir(model))
    env = {**os.environ}
    base = [sys.executable, "-m", "headstart", "train", str(TRAIN), "-b", "minilm-l6", "--head", "knn(k=3)",
            "-o", str(model)]
    for syscall, when in (("rename", 1), ("rename", 3), ("renameat2", 1)):
        proc = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={syscall}",
                               "-e", f"inject={syscall}:signal=KILL:when={when}", *base],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode != 0 and "model written" not in proc.stdout, (syscall, when, proc.stdout)
        assert sorted(os.listdir(model)) == old and load_model(model).manifest["head"]["format"] == "skops"
    proc = subprocess.run(base, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert load_model(model).manifest["head"]["name"] == "knn" and "head.skops" not in os.listdir(model)
    assert sorted(os.listdir(tmp_path)) == ["m"]  # the killed runs' staging folders are gone


def test_finetune_refuses_bad_head_values_before_embedding(tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = _cli("finetune", str(TRAIN), "-b", "minilm-l6", "--head", "mlp(dropout=1.5)", "-o", str(tmp_path / "m"),
                home=home)
    _refused(proc, "'dropout'")
    assert not (home / "features").exists() and not (tmp_path / "m").exists()
