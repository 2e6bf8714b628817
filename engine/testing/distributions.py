"""Build throw-away plugin distributions and virtual environments to install them into."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PluginDistribution:
    """A plugin distribution on disk: ``root`` holds ``pyproject.toml`` and the module."""

    name: str
    root: Path
    module: str


def build_plugin_distribution(
    directory: str | os.PathLike[str],
    name: str,
    code: str,
    *,
    entry_point: str | None = None,
    module: str | None = None,
    version: str = "0.1.0",
) -> PluginDistribution:
    """Write a minimal distribution ``name`` whose module holds ``code``.

    Its entry point in group ``headstart`` is ``<name> = <entry_point>``; by default
    ``entry_point`` is the module itself.
    """
    module = module or name.replace("-", "_")
    root = Path(directory) / name
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    target = entry_point or module
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "{version}"

        [tool.setuptools]
        py-modules = ["{module}"]

        [project.entry-points.headstart]
        {module} = "{target}"
        """))
    return PluginDistribution(name=name, root=root, module=module)


@dataclass
class PluginVenv:
    """A virtual environment created with ``--system-site-packages``, so it sees headstart."""

    root: Path

    @classmethod
    def create(cls, directory: str | os.PathLike[str]) -> "PluginVenv":
        import sysconfig

        root = Path(directory)
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)],
                       check=True, capture_output=True)
        venv = cls(root)
        if sys.prefix != sys.base_prefix:
            # Created from inside a venv: --system-site-packages only reaches the *base* interpreter's
            # packages, so also chain the current environment's site-packages (its .pth files included).
            parent = sysconfig.get_paths()["purelib"]
            (venv.site_packages / "_headstart_parent_env.pth").write_text(
                f"import site; site.addsitedir({parent!r})\n")
        return venv

    @property
    def python(self) -> Path:
        return self.root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    @property
    def site_packages(self) -> Path:
        out = subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True)
        return Path(out.stdout.strip())

    def pip_install(self, *dists: PluginDistribution) -> None:
        """Install with the host's pip into this venv (no network, no build isolation)."""
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
               "--no-index", "--target", str(self.site_packages), *[str(d.root) for d in dists]]
        subprocess.run(cmd, check=True, capture_output=True, text=True)

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``python -m headstart ARGS`` inside the venv."""
        full_env = {**os.environ, **(env or {})}
        return subprocess.run([str(self.python), "-m", "headstart", *args], capture_output=True, text=True,
                              env=full_env, timeout=timeout)
