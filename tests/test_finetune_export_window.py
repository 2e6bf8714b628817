"""The fine-tune's early export (engine/train/finetune.py ``_EarlyExport``): from its start until it is joined,
BLAS runs on one thread (the parity session, its reference outputs and the head fit run at once then); after,
the thread count the process had is back."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from headstart.engine.plugins import get_engine
from headstart.engine.train.finetune import _EarlyExport


def _blas_threads() -> list[int]:
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_blas_runs_on_one_thread_from_the_early_export_start_until_it_is_joined(tmp_path, monkeypatch) -> None:
    from headstart.engine.blas_threads import one_blas_thread

    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path))
    np.ones((2, 2)) @ np.ones((2, 2))  # numpy's BLAS loaded
    with one_blas_thread():
        pass
    import scipy.linalg  # noqa: F401 - scipy's own OpenBLAS, loaded after a first use: limited too
    with threadpool_limits(limits=2, user_api="blas"):
        assert _blas_threads() and set(_blas_threads()) == {2}
        early = _EarlyExport(get_engine())
        early.start("no-such-backbone")  # the export fails on its thread; the export after the finetuner says why
        assert set(_blas_threads()) == {1}
        early.join()
        assert set(_blas_threads()) == {2}
        early.join()  # joining twice changes nothing
        assert set(_blas_threads()) == {2}
