"""One local Ray cluster per test session, shared by every Ray test file (tests/test_ray*.py).

The first fixture that asks starts it (8 logical CPUs, no dashboard, ~200 MB object store) and stops it
at the end of the session; a later one joins it.
"""

from __future__ import annotations

import logging
from typing import Iterator

import pytest


def session_cluster() -> Iterator[str]:
    """Yield the GCS address of the session's cluster (starting it when none runs in this process)."""
    import ray

    with pytest.MonkeyPatch.context() as mp:  # restored after the session's cluster is stopped
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=8, include_dashboard=False, object_store_memory=200 << 20,
                     logging_level=logging.WARNING)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            if started:
                ray.shutdown()
