"""``one_blas_thread()``: the loaded BLAS libraries (numpy's and scipy's OpenBLAS) on one thread for a block, the
previous counts restored."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any


def one_blas_thread() -> AbstractContextManager:
    """Limit the loaded BLAS libraries to one thread for the block, through threadpoolctl (installed with
    scikit-learn; a no-op without it). For small matrix products, where thread barriers cost more than they
    save, and for work that runs on several Python threads at once, each wanting a core of its own.

    Enter it on the main thread: OpenBLAS (0.3.31, numpy's) ignores a thread count set from another thread
    once the main thread has set one; the count it sets holds for every thread."""
    controller = _blas_controller()
    return nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


def _blas_controller() -> Any:
    """threadpoolctl's controller of the BLAS libraries loaded now, or None without threadpoolctl. Made anew on
    every call (about 2 ms): a cached one misses the libraries loaded after it, such as scipy's own OpenBLAS,
    which comes in with scikit-learn after numpy's, and would leave them on every thread."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()
