"""``one_torch_thread()``: PyTorch on one thread for a block of small operations, the caller's count restored."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(1)``: operations on small tensors (a GRU step, a 384² eigh, an
    L-BFGS step on a few thousand rows) cost more in thread barriers than they gain, most of all on a busy
    machine. The previous thread count comes back afterwards, also when the block raises."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
