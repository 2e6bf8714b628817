"""A tiny run of examples/transactions/generate.py, the example's own generator, for the sequence tests."""

from __future__ import annotations

import sys
from pathlib import Path


def generate_transactions(folder: Path, *, pool: int = 80, labelled: int = 120, test: int = 20,
                          fraud_rate: float = 0.3) -> Path:
    """Write pool/labelled/test Parquet tables into ``folder`` (30 % fraud by default, so a tiny set has some)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "transactions"))
    try:
        from generate import main
    finally:
        sys.path.pop(0)
    main([str(folder), "--pool", str(pool), "--labelled", str(labelled), "--test", str(test),
          "--fraud-rate", str(fraud_rate)])
    return folder
