"""The catalog of what the plugins registered: backbones, heads, readers, finetuners.

The engine fills it from the ``register_*`` hooks (:attr:`REGISTER_HOOKS`) the first time it is needed. Lookups of unknown
names raise :class:`UnknownNameError` with the closest registered name.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Iterable

from .errors import UnknownNameError

KINDS = ("backbone", "head", "reader", "finetuner")
REGISTER_HOOKS = {
    "backbone": "register_backbones",
    "head": "register_heads",
    "reader": "register_readers",
    "finetuner": "register_finetuners",
}


@dataclass
class Entry:
    """One registered thing and the plugin that registered it."""

    kind: str
    name: str
    spec: Any
    plugin: str
    aliases: tuple[str, ...] = ()


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to ``name``, or ``None`` if nothing is close."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


@dataclass
class Catalog:
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    aliases: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in KINDS})
    conflicts: list[str] = field(default_factory=list)
    failed_plugins: list[str] = field(default_factory=list)  # "name (dist version): stage: message", for errors

    def registrar(self, kind: str, plugin: str):
        """The ``register`` function a ``register_*`` hook of ``plugin`` receives for ``kind``."""
        def register(spec: Any, aliases: Iterable[str] = ()) -> None:
            name = getattr(spec, "name", None)
            if not isinstance(name, str) or not name:
                raise TypeError(f"a {kind} spec needs a non-empty string 'name', got {spec!r}")
            if name in self.entries[kind]:
                other = self.entries[kind][name].plugin
                self.conflicts.append(f"{kind} '{name}' from plugin '{plugin}' ignored: already registered by '{other}'")
                return
            spec_aliases = tuple(getattr(spec, "aliases", ()) or ())
            all_aliases = tuple(dict.fromkeys((*spec_aliases, *aliases)))
            self.entries[kind][name] = Entry(kind, name, spec, plugin, all_aliases)
            for alias in all_aliases:
                self.aliases[kind].setdefault(alias, name)

        return register

    def drop_plugin(self, plugin: str) -> None:
        """Forget everything ``plugin`` registered (its hook raised half-way)."""
        for kind in KINDS:
            for name in [n for n, e in self.entries[kind].items() if e.plugin == plugin]:
                del self.entries[kind][name]
            for alias in [a for a, n in self.aliases[kind].items() if n not in self.entries[kind]]:
                del self.aliases[kind][alias]

    # -- lookups -----------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def items(self, kind: str) -> list[Entry]:
        return [self.entries[kind][n] for n in self.names(kind)]

    def find(self, kind: str, name: str) -> Entry | None:
        name = self.aliases[kind].get(name, name)
        return self.entries[kind].get(name)

    def get(self, kind: str, name: str) -> Entry:
        entry = self.find(kind, name)
        if entry is None:
            raise self.unknown(kind, name)
        return entry

    def unknown(self, kind: str, name: str) -> UnknownNameError:
        known = [*self.entries[kind], *self.aliases[kind]]
        guess = did_you_mean(name, known)
        listing = ", ".join(self.names(kind)) or "none"
        message = f"unknown {kind} '{name}'" + (f"; did you mean '{guess}'?" if guess else "")
        command = f"headstart {kind}s" if kind in ("backbone", "head") else "headstart plugins"
        hint = f"registered {kind}s: {listing} (see `{command}`)"
        if self.failed_plugins:
            message += (f"; {len(self.failed_plugins)} plugin(s) failed to load and may be the one that provides it: "
                        + "; ".join(self.failed_plugins))
            hint = "fix or reinstall the failed plugin (`headstart plugins` shows why it failed); " + hint
        return UnknownNameError(message, hint=hint)
