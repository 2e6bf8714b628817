"""The plugin manager: load ``headstart`` entry points one by one and isolate failures.

pluggy's own ``load_setuptools_entrypoints`` stops at the first broken plugin; here
each entry point is imported, validated and registered on its own, and a failure is
kept as a :class:`PluginRecord` (distribution, version, stage, message) that
``headstart plugins`` shows. Strict mode (``--strict-plugins`` or
``HEADSTART_STRICT_PLUGINS=1``) turns any such failure into a :class:`PluginLoadError`.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any, Iterator

import pluggy

from . import hookspecs
from .config import Settings
from .errors import PluginError, PluginLoadError
from .registry import REGISTER_HOOKS, Catalog

ENTRY_POINT_GROUP = "headstart"
BUILTIN_DISTRIBUTION = "headstart"

#: Stages at which loading a plugin can fail, in order.
STAGES = ("load", "validate", "register", "hook")


@dataclass
class PluginRecord:
    """What is known about one plugin: where it came from and whether it works."""

    name: str
    value: str
    distribution: str | None
    version: str | None
    builtin: bool
    status: str = "ok"  # "ok" | "failed" | "disabled"
    stage: str | None = None
    error: str | None = None
    hooks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.distribution else "no distribution"
        return f"plugin '{self.name}' ({dist})"


def _hookimpl_functions(obj: Any) -> dict[str, Any]:
    """The attributes of ``obj`` marked with :data:`engine.hookimpl`, by hook name."""
    found = {}
    for attr in dir(obj):
        fn = getattr(obj, attr, None)
        opts = getattr(fn, hookspecs.PROJECT + "_impl", None)
        if opts is not None:
            found[opts.get("specname") or attr] = fn
    return found


class Engine:
    """The running host: settings, the pluggy manager, plugin records and the catalog."""

    def __init__(self, settings: Settings | None = None, *, autoload: bool = True) -> None:
        self.settings = settings or Settings.from_env()
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self._catalog = None
        self._lock = threading.RLock()
        if autoload:
            self.load_entrypoints()

    # -- loading -----------------------------------------------------------------
    def load_entrypoints(self) -> None:
        """Load every entry point in group ``headstart``, built-ins first."""
        eps = sorted(
            metadata.entry_points(group=ENTRY_POINT_GROUP),
            key=lambda ep: (not self._is_builtin(ep), ep.name),
        )
        for ep in eps:
            self._load_one(ep)

    @staticmethod
    def _is_builtin(ep: metadata.EntryPoint) -> bool:
        dist = getattr(ep, "dist", None)
        return dist is not None and dist.metadata["Name"] == BUILTIN_DISTRIBUTION

    def _load_one(self, ep: metadata.EntryPoint) -> PluginRecord:
        dist = getattr(ep, "dist", None)
        builtin = self._is_builtin(ep)
        record = PluginRecord(
            name=ep.name,
            value=ep.value,
            distribution=dist.metadata["Name"] if dist else None,
            version=dist.version if dist else None,
            builtin=builtin,
        )
        opts = self.settings.plugins
        if ep.name in opts.disabled or (not builtin and ("*" in opts.disabled or not opts.autoload)):
            record.status = "disabled"
            self.records.setdefault(ep.name, record)
            return record
        if ep.name in self.records and self.records[ep.name].status == "ok":
            return self._fail(record, "load", f"a plugin named '{ep.name}' is already registered by "
                              f"{self.records[ep.name].label}; rename the entry point")
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is recorded
            return self._fail(record, "load", f"{type(exc).__name__}: {exc}")
        return self._register(obj, record)

    def register_plugin(
        self, obj: Any, name: str | None = None, *, distribution: str | None = None, version: str | None = None
    ) -> PluginRecord:
        """Register an in-process plugin object (a module or instance); used by tests and embedders."""
        name = name or getattr(obj, "__name__", None) or type(obj).__name__
        record = PluginRecord(name=name, value=repr(obj), distribution=distribution, version=version, builtin=False)
        return self._register(obj, record)

    def unregister_plugin(self, name: str) -> None:
        with self._lock:
            if self.pm.has_plugin(name):
                self.pm.unregister(name=name)
            self.records.pop(name, None)
            self._catalog = None

    def _register(self, obj: Any, record: PluginRecord) -> PluginRecord:
        impls = _hookimpl_functions(obj)
        record.hooks = sorted(impls)
        known = {name for name in dir(self.pm.hook) if not name.startswith("_")}
        for hook_name, fn in impls.items():
            if hook_name not in known:
                return self._fail(record, "validate", f"unknown hook '{hook_name}'; known hooks: {', '.join(sorted(known))}")
            with_default = [p.name for p in inspect.signature(fn).parameters.values()
                            if p.default is not inspect.Parameter.empty]
            if with_default:
                return self._fail(record, "validate", f"hook '{hook_name}' gives defaults to {with_default}; "
                                  "pluggy would never pass them, remove the defaults")
        try:
            self.pm.register(obj, name=record.name)
        except Exception as exc:  # noqa: BLE001 - pluggy's PluginValidationError and friends
            return self._fail(record, "register", f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.records[record.name] = record
            self._catalog = None
        return record

    def _fail(self, record: PluginRecord, stage: str, message: str) -> PluginRecord:
        record.status, record.stage, record.error = "failed", stage, message
        with self._lock:
            existing = self.records.get(record.name)
            key = record.name
            if existing is not None and existing is not record and existing.status == "ok":
                key = f"{record.name} ({record.distribution})"  # a clash: keep the working one visible
            self.records[key] = record
            self._catalog = None
        if self.settings.plugins.strict:
            raise PluginLoadError(
                f"{record.label} failed at stage '{stage}': {message}",
                hint="fix or uninstall the plugin, or drop --strict-plugins / HEADSTART_STRICT_PLUGINS",
            )
        return record

    # -- calling hooks -----------------------------------------------------------
    def _impls(self, hook_name: str) -> Iterator[tuple[PluginRecord, Any]]:
        hook = getattr(self.pm.hook, hook_name)
        # get_hookimpls() lists impls in registration order (built-ins first); pluggy itself calls them LIFO.
        for impl in hook.get_hookimpls():
            record = self.records.get(impl.plugin_name)
            if record is not None and record.status == "ok":
                yield record, impl

    def call_each(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of a collecting hook; a raising plugin is recorded, not fatal."""
        for record, impl in self._impls(hook_name):
            args = {k: kwargs[k] for k in impl.argnames}
            try:
                impl.function(**args)
            except Exception as exc:  # noqa: BLE001
                self._fail(record, "hook", f"{hook_name} raised {type(exc).__name__}: {exc}")

    def call_first(self, hook_name: str, **kwargs: Any) -> Any:
        """Call a first-result hook; a raising plugin fails this call, naming the plugin and its version."""
        for record, impl in self._impls(hook_name):
            args = {k: kwargs[k] for k in impl.argnames}
            try:
                result = impl.function(**args)
            except Exception as exc:
                if hasattr(exc, "hint") and hasattr(exc, "message"):
                    raise
                raise PluginError(
                    f"{record.label} raised in {hook_name}: {type(exc).__name__}: {exc}",
                    hint="report it to the plugin's authors, or disable it with HEADSTART_DISABLE_PLUGINS",
                ) from exc
            if result is not None:
                return result
        return None

    # -- the catalog ---------------------------------------------------------------
    @property
    def catalog(self) -> Catalog:
        with self._lock:
            if self._catalog is None:
                self._catalog = self._collect_catalog()
            return self._catalog

    def _collect_catalog(self) -> Catalog:
        """Call every ``register_*`` hook; a plugin that raises is recorded and what it registered dropped."""
        catalog = Catalog()
        for kind, hook in REGISTER_HOOKS.items():
            for record, impl in self._impls(hook):
                register = catalog.registrar(kind, record.name)
                try:
                    impl.function(**{k: {"register": register, "engine": self}[k] for k in impl.argnames})
                except Exception as exc:  # noqa: BLE001 - isolate the plugin, keep the rest
                    self._fail(record, "hook", f"{hook} raised {type(exc).__name__}: {exc}")
                    catalog.drop_plugin(record.name)
        catalog.failed_plugins = [f"{r.label}: {r.stage}: {r.error}" for r in self.failed_plugins()]
        return catalog

    def plugin_records(self) -> list[PluginRecord]:
        return sorted(self.records.values(), key=lambda r: (not r.builtin, r.name))

    def failed_plugins(self) -> list[PluginRecord]:
        return [r for r in self.plugin_records() if r.status == "failed"]


_default: Engine | None = None
_default_lock = threading.Lock()


def get_engine() -> Engine:
    """The process-wide engine, created (and its plugins loaded) on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Engine()
        return _default


def set_engine(engine: Engine | None) -> Engine | None:
    """Replace the process-wide engine (``None`` resets it); returns the previous one."""
    global _default
    with _default_lock:
        previous, _default = _default, engine
        return previous
