"""The plugin system: entry points loaded one by one, failures isolated and shown, strict mode, catalog."""

from __future__ import annotations

import json
import textwrap

import pytest

from headstart import hookimpl
from headstart.engine.config import Settings
from headstart.engine.errors import PluginError, PluginLoadError, UnknownNameError
from headstart.engine.heads.spec import HeadSpec
from headstart.engine.plugins import Engine

CENTROID_HEAD = '''
import numpy as np
from headstart import hookimpl
from headstart.engine.heads.spec import HeadSpec


class NearestCentroid:
    """A working third-party head: nearest class centroid, scikit-learn contract."""

    def __init__(self, temperature=1.0):
        self.temperature = temperature

    def get_params(self, deep=True):
        return {"temperature": self.temperature}

    def set_params(self, **params):
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float64)
        self.classes_, inverse = np.unique(np.asarray(y), return_inverse=True)
        self.centroids_ = np.stack([X[inverse == i].mean(axis=0) for i in range(len(self.classes_))])
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X):
        d = -((np.asarray(X, dtype=np.float64)[:, None, :] - self.centroids_[None]) ** 2).sum(-1) / self.temperature
        e = np.exp(d - d.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


@hookimpl
def register_heads(register):
    register(HeadSpec(name="centroid", factory=NearestCentroid, description="nearest class centroid (test plugin)"))
'''

IMPORT_ERROR = "import headstart_no_such_module_xyz\n"
WRONG_ARGUMENT = '''
from headstart import hookimpl

@hookimpl
def register_heads(register, no_such_argument):
    pass
'''


@pytest.fixture(scope="module")
def third_party_env(tmp_path_factory):
    """A venv that sees headstart, with one working and three broken plugin distributions pip-installed."""
    from headstart.engine.testing.distributions import PluginVenv, build_plugin_distribution

    root = tmp_path_factory.mktemp("plugins")
    dists = [
        build_plugin_distribution(root / "dists", "hs-centroid", CENTROID_HEAD),
        build_plugin_distribution(root / "dists", "hs-import-error", IMPORT_ERROR),
        build_plugin_distribution(root / "dists", "hs-missing-attr", "X = 1\n",
                                  entry_point="hs_missing_attr:does_not_exist"),
        build_plugin_distribution(root / "dists", "hs-wrong-arg", WRONG_ARGUMENT),
    ]
    venv = PluginVenv.create(root / "venv")
    venv.pip_install(*dists)
    env = {"HEADSTART_HOME": str(root / "home")}
    return venv, env


def test_third_party_head_is_listed_and_works(third_party_env):
    venv, env = third_party_env
    result = venv.run("heads", "--json", env=env)
    assert result.returncode == 0, result.stderr
    heads = {h["name"]: h for h in json.loads(result.stdout)}
    assert heads["centroid"]["plugin"] == "hs_centroid"
    # The head really works inside that environment, reached through the catalog like a built-in.
    code = textwrap.dedent("""
        import numpy as np
        from headstart.engine.plugins import get_engine
        rng = np.random.default_rng(0)
        X = np.concatenate([rng.normal(0, 1, (50, 8)), rng.normal(4, 1, (50, 8))])
        y = np.array(["a"] * 50 + ["b"] * 50)
        head = get_engine().catalog.get("head", "centroid").spec.build()
        print((head.fit(X, y).predict(X) == y).mean())
    """)
    import subprocess

    out = subprocess.run([str(venv.python), "-c", code], capture_output=True, text=True, env={**__import__("os").environ, **env})
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) >= 0.95


def test_broken_plugins_are_shown_and_do_not_break_other_commands(third_party_env):
    venv, env = third_party_env
    result = venv.run("plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    records = {r["name"]: r for r in json.loads(result.stdout)["plugins"]}
    assert records["hs_import_error"]["status"] == "failed"
    assert records["hs_import_error"]["stage"] == "load"
    assert "headstart_no_such_module_xyz" in records["hs_import_error"]["error"]
    assert records["hs_import_error"]["distribution"] == "hs-import-error"
    assert records["hs_import_error"]["version"] == "0.1.0"
    assert records["hs_missing_attr"]["status"] == "failed"
    assert records["hs_missing_attr"]["stage"] == "load"
    assert "does_not_exist" in records["hs_missing_attr"]["error"]
    assert records["hs_wrong_arg"]["status"] == "failed"
    assert records["hs_wrong_arg"]["stage"] == "register"
    assert "no_such_argument" in records["hs_wrong_arg"]["error"]
    assert records["hs_centroid"]["status"] == "ok"

    text = venv.run("plugins", env=env)
    assert text.returncode == 0
    assert "FAILED plugin 'hs_import_error' (hs-import-error 0.1.0) at stage 'load'" in text.stdout

    for command in ("heads", "backbones"):
        listed = venv.run(command, env=env)
        assert listed.returncode == 0, listed.stderr
        assert "failed to load" in listed.stderr


def test_strict_mode_makes_a_broken_plugin_fatal(third_party_env):
    venv, env = third_party_env
    result = venv.run("heads", env={**env, "HEADSTART_STRICT_PLUGINS": "1"})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: plugin 'hs_")
    flag = venv.run("--strict-plugins", "heads", env=env)
    assert flag.returncode != 0 and "failed at stage" in flag.stderr


def test_disabled_plugins_are_skipped(third_party_env):
    venv, env = third_party_env
    result = venv.run("plugins", "--json", env={**env, "HEADSTART_DISABLE_PLUGINS": "hs_import_error,hs_centroid"})
    records = {r["name"]: r for r in json.loads(result.stdout)["plugins"]}
    assert records["hs_import_error"]["status"] == "disabled"
    assert records["hs_centroid"]["status"] == "disabled"
    assert records["hs_wrong_arg"]["status"] == "failed"
    off = venv.run("plugins", "--json", env={**env, "HEADSTART_DISABLE_PLUGIN_AUTOLOAD": "1"})
    records = {r["name"]: r for r in json.loads(off.stdout)["plugins"]}
    assert all(r["status"] == "disabled" for r in records.values() if not r["builtin"])
    assert any(r["status"] == "ok" for r in records.values() if r["builtin"])


# -- in-process checks of the manager -------------------------------------------------------------


class _Plugin:
    def __init__(self, **hooks):
        for name, fn in hooks.items():
            setattr(self, name, fn)


def _bare_engine(tmp_path) -> Engine:
    return Engine(Settings.from_env(home=tmp_path), autoload=False)


def _spec(name: str) -> HeadSpec:
    return HeadSpec(name=name, factory=dict, description=name)


def test_unknown_hook_is_refused_at_validation(tmp_path):
    engine = _bare_engine(tmp_path)

    @hookimpl
    def register_widgets(register):
        pass

    record = engine.register_plugin(_Plugin(register_widgets=register_widgets), "widgets")
    assert (record.status, record.stage) == ("failed", "validate")
    assert "unknown hook 'register_widgets'" in record.error


def test_hookimpl_argument_with_default_is_refused(tmp_path):
    engine = _bare_engine(tmp_path)

    @hookimpl
    def register_heads(register, engine=None):
        pass

    record = engine.register_plugin(_Plugin(register_heads=register_heads), "defaults")
    assert record.stage == "validate" and "defaults" in record.error


def test_plugin_raising_in_a_hook_is_isolated(tmp_path):
    engine = _bare_engine(tmp_path)

    @hookimpl
    def register_heads(register):
        register(_spec("fine"))

    @hookimpl
    def register_heads_broken(register):
        register(_spec("half"))
        raise RuntimeError("boom")

    register_heads_broken.headstart_impl["specname"] = "register_heads"
    engine.register_plugin(_Plugin(register_heads=register_heads), "good")
    engine.register_plugin(_Plugin(broken=register_heads_broken), "bad", distribution="bad-dist", version="9.9")
    catalog = engine.catalog
    assert catalog.names("head") == ["fine"]  # the half-registered head of the raising plugin is dropped
    record = engine.records["bad"]
    assert (record.status, record.stage) == ("failed", "hook")
    assert "RuntimeError: boom" in record.error


def test_first_result_hook_error_names_plugin_and_version(tmp_path):
    engine = _bare_engine(tmp_path)

    @hookimpl
    def resolve_backbone(ref):
        raise ValueError("cannot parse")

    engine.register_plugin(_Plugin(resolve_backbone=resolve_backbone), "resolver", distribution="res", version="1.2")
    with pytest.raises(PluginError, match=r"plugin 'resolver' \(res 1.2\) raised in resolve_backbone"):
        engine.call_first("resolve_backbone", ref="x:y", engine=engine)


def test_strict_engine_raises_on_failure(tmp_path):
    engine = Engine(Settings.from_env(home=tmp_path, strict_plugins=True), autoload=False)

    @hookimpl
    def nope(register):
        pass

    with pytest.raises(PluginLoadError, match="stage 'validate'"):
        engine.register_plugin(_Plugin(nope=nope), "strict")


def test_duplicate_names_keep_the_first_and_report_a_conflict(tmp_path):
    engine = _bare_engine(tmp_path)
    for plugin in ("first", "second"):
        @hookimpl
        def register_heads(register):
            register(_spec("same"))

        engine.register_plugin(_Plugin(register_heads=register_heads), plugin)
    catalog = engine.catalog
    assert catalog.get("head", "same").plugin == "first"
    assert catalog.conflicts and "second" in catalog.conflicts[0]


def test_unknown_name_suggests_the_closest(tmp_path):
    engine = _bare_engine(tmp_path)

    @hookimpl
    def register_heads(register):
        register(_spec("linear"))
        register(_spec("mlp"))

    engine.register_plugin(_Plugin(register_heads=register_heads), "heads")
    with pytest.raises(UnknownNameError, match=r"unknown head 'lineer'; did you mean 'linear'\?"):
        engine.catalog.get("head", "lineer")


def test_register_plugin_fixture_scopes_a_plugin_to_one_test(register_plugin, headstart_engine):
    @hookimpl
    def register_heads(register):
        register(_spec("scoped-head"))

    register_plugin(_Plugin(register_heads=register_heads), "scoped")
    assert "scoped-head" in headstart_engine.catalog.names("head")
    records = [r for r in headstart_engine.plugin_records() if r.name == "scoped"]
    assert records and all(r.status == "ok" for r in records), records  # all() of nothing would pass
