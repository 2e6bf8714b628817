"""Settings, as frozen dataclasses: the one place every tunable is defined.

The store root is a per-user cache directory (``platformdirs``), overridden by
``HEADSTART_HOME`` or the CLI's ``--store``. Plugin loading is controlled by:

* ``HEADSTART_STRICT_PLUGINS=1`` — a plugin that fails to load is fatal;
* ``HEADSTART_DISABLE_PLUGINS=name,name`` — skip these entry points (``*`` skips all
  third-party ones; built-ins still load);
* ``HEADSTART_DISABLE_PLUGIN_AUTOLOAD=1`` — load no entry points except the built-ins.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

ENV_HOME = "HEADSTART_HOME"
ENV_STRICT = "HEADSTART_STRICT_PLUGINS"
ENV_DISABLE = "HEADSTART_DISABLE_PLUGINS"
ENV_NO_AUTOLOAD = "HEADSTART_DISABLE_PLUGIN_AUTOLOAD"

_TRUE = {"1", "true", "yes", "on"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def default_home() -> Path:
    """The per-user cache directory, unless ``HEADSTART_HOME`` says otherwise."""
    env = os.environ.get(ENV_HOME)
    if env:
        return check_home(Path(env).expanduser().resolve(), f"{ENV_HOME}={env}")
    import platformdirs

    return Path(platformdirs.user_cache_dir("headstart", appauthor=False)).resolve()


def check_home(home: Path, named: str) -> Path:
    """``home`` when it (and its ``features``/``exports`` folders) is a directory or can become one;
    else a one-line :class:`ConfigError` (not a ``NotADirectoryError`` from deep inside a job)."""
    from .errors import ConfigError

    hint = f"point {ENV_HOME} (or --store) at a directory, or at a path that does not exist yet"
    for path in (home / "features", home / "exports"):
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path} (inside {named}) is a file, not a directory", hint=f"move the file away; {hint}")
    existing = next((p for p in (home, *home.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        what = "is a file" if existing == home else f"lies under the file {existing}"
        raise ConfigError(f"{named} {what}, not a directory", hint=hint)
    return home


@dataclass(frozen=True)
class PluginSettings:
    """How entry points in group ``headstart`` are loaded."""

    strict: bool = False
    disabled: frozenset[str] = frozenset()
    autoload: bool = True

    @classmethod
    def from_env(cls) -> "PluginSettings":
        disabled = frozenset(
            n.strip() for n in os.environ.get(ENV_DISABLE, "").split(",") if n.strip()
        )
        return cls(strict=_env_flag(ENV_STRICT), disabled=disabled, autoload=not _env_flag(ENV_NO_AUTOLOAD))


@dataclass(frozen=True)
class Settings:
    """Process-wide settings; build with :meth:`from_env` and derive with :meth:`replace`."""

    home: Path = field(default_factory=default_home)
    plugins: PluginSettings = field(default_factory=PluginSettings.from_env)

    @classmethod
    def from_env(cls, *, home: str | os.PathLike[str] | None = None, strict_plugins: bool | None = None) -> "Settings":
        plugins = PluginSettings.from_env()
        if strict_plugins is not None:
            plugins = replace(plugins, strict=strict_plugins)
        root = check_home(Path(home).expanduser().resolve(), f"the store root {home} (--store / {ENV_HOME})") if home else default_home()
        return cls(home=root, plugins=plugins)

    @property
    def exports_dir(self) -> Path:
        """Where exported ONNX backbones live: ``<home>/exports/<backbone>/<fingerprint>/``."""
        return self.home / "exports"

    @property
    def features_dir(self) -> Path:
        """Where feature stores live: ``<home>/features/<fingerprint>/``."""
        return self.home / "features"

    def replace(self, **changes: object) -> "Settings":
        return replace(self, **changes)
