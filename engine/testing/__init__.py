"""The plugin test kit: fixtures and conformance checks for headstart plugins.

Installed as a pytest plugin (entry point ``pytest11``), so a plugin's own test suite
gets the fixtures just by installing headstart:

* ``headstart_home`` — an empty store root for one test (``HEADSTART_HOME`` points at it);
* ``headstart_engine`` — a fresh :class:`engine.Engine` over that root, made the process default;
* ``register_plugin`` — ``register_plugin(obj, name=...)`` registers an in-process plugin for one test;
* ``plugin_dist`` — builds a throw-away plugin distribution (``pyproject.toml`` + module) on disk;
* ``plugin_venv`` — a virtual environment that sees headstart, to pip-install such distributions into.

Conformance checks live in :mod:`headstart.engine.testing.conformance`.
"""

from .distributions import PluginDistribution, PluginVenv, build_plugin_distribution

__all__ = ["PluginDistribution", "PluginVenv", "build_plugin_distribution"]
