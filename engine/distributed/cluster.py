"""Connect to a Ray cluster (or start a local one) with settings that do not hang on small machines.

A local cluster gets twice as many logical CPUs as the machine has cores (at least 8), so the
actors never hold every slot (Ray's own tasks and a second job still find one), no dashboard
and no usage reporting.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, DistributedError

INSTALL_HINT = "install the extra: pip install 'headstart[ray]'"
CONNECT_TIMEOUT_S = 3.0  # a cluster address that accepts no TCP connection within this fails at once
START_HINT = ("start one with `ray start --head` and pass its address (e.g. --address 127.0.0.1:6379), "
              "or omit --address for a local one")


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` / ``ray://host:port`` / ``[v6]:port``; ``None`` for ``auto``/``local``."""
    rest = address.split("://", 1)[1] if "://" in address else address
    if rest in ("auto", "local", ""):
        return None
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise DistributedError(f"Ray cluster address '{address}' is not host:port", hint=START_HINT)
    return host.strip("[]") or "127.0.0.1", int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """:class:`DistributedError` naming ``address`` when nothing accepts a TCP connection there within
    ``timeout`` seconds (Ray itself would retry for minutes, printing reconnect warnings)."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise DistributedError(f"cannot reach the Ray cluster at {address}: {reason} "
                               f"(TCP connect to {target[0]}:{target[1]}, {timeout:g}s timeout)",
                               hint=START_HINT) from None


def import_ray() -> Any:
    """``ray``, or :class:`ConfigError` saying how to install it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray, which is not installed ({exc})", hint=INSTALL_HINT) from None
    return ray


@dataclass
class Cluster:
    """A connection to Ray: whether this call started it (and so shuts it down), and its resources."""

    started: bool
    cpus: float
    gpus: float
    nodes: int

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()


def local_cpus() -> int:
    """Logical CPUs for a local cluster: more than the cores, so Ray's own tasks always find a slot."""
    return max(8, 2 * (os.cpu_count() or 1))


def connect(address: str | None) -> Cluster:
    """Join ``address`` (``auto``, ``ray://host:port`` or ``host:port``), reuse an initialised Ray, or start one."""
    if address is not None:
        check_reachable(address)
        os.environ.setdefault("RAY_gcs_server_request_timeout_seconds", "20")  # Ray's own GCS wait (default 60 s)
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
        if address is None:
            kwargs.update(num_cpus=local_cpus(), include_dashboard=False)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise DistributedError(f"cannot connect to the Ray cluster at {address}: {exc}", hint=START_HINT) from None
        started = True
    resources = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return Cluster(started=started, cpus=float(resources.get("CPU", 0)), gpus=float(resources.get("GPU", 0)),
                   nodes=nodes)


def default_workers(cluster: Cluster, cpus_per_worker: float, gpus_per_worker: float) -> int:
    """One actor per GPU share when GPUs are asked for; else one per core here, or all CPU slots but one."""
    if gpus_per_worker > 0:
        n = int(cluster.gpus // gpus_per_worker)
        if n < 1:
            raise ConfigError(f"the Ray cluster has {cluster.gpus:g} GPU(s), too few for {gpus_per_worker:g} per worker",
                              hint="lower --gpus-per-worker, add GPU nodes, or run on CPUs (--gpus-per-worker 0)")
        return n
    if cluster.started and cluster.nodes == 1:
        return max(1, int((os.cpu_count() or 1) // cpus_per_worker))
    return max(1, int((cluster.cpus - 1) // cpus_per_worker))
