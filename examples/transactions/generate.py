"""Synthetic card transactions where fraud lives in the *sequence*, not in any single transaction.

Each account has a home country, a spending scale, a few favourite merchant categories and a rhythm. Normal
histories already hold everything a fraudulent one does, one transaction at a time: small amounts (coffee,
parking), foreign transactions (travel), bursts (a shopping afternoon), large purchases. A compromised account
ends with one of two episodes that only the order gives away:

* **card testing**: 3-6 tiny amounts at merchants the account never used, minutes apart, then a large one;
* **account takeover**: a switch to a new country *and* a new set of merchant categories, with amounts well
  above the account's own scale, kept up for several transactions.

Writes Parquet files sorted by account (the events reader needs each account's rows together):

* ``pool.parquet``: a large unlabelled history (pretraining data), no label column;
* ``labelled.parquet``: a small labelled set (``label`` = fraud | ok on every row of the account);
* ``test.parquet``: a held-out labelled set.

Columns: account_id, ts (timestamp), amount, log_amount, log_gap (log1p of minutes since the account's
previous transaction), merchant, category, country, label.

    python examples/transactions/generate.py OUT_DIR [--pool 20000] [--labelled 2000] [--test 2000] [--fraud-rate 0.05]
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np

COUNTRIES = ["US", "CA", "GB", "FR", "DE", "ES", "IT", "MX", "BR", "JP", "IN", "NG", "RU", "CN", "AU"]
CATEGORIES = ["grocery", "fuel", "coffee", "restaurant", "pharmacy", "transit", "clothing", "electronics",
              "travel", "hotel", "gaming", "giftcards", "jewelry", "online", "utilities", "parking"]
MERCHANTS_PER_CATEGORY = 40
START = dt.datetime(2024, 1, 1)


def _merchant(rng: np.random.Generator, category: str) -> str:
    return f"{category}-{int(rng.integers(MERCHANTS_PER_CATEGORY)):02d}"


def _account(rng: np.random.Generator, fraud: str | None) -> list[tuple]:
    """One account's transactions: (ts, amount, merchant, category, country), in time order."""
    home = str(rng.choice(COUNTRIES[:8], p=[.4, .1, .1, .1, .1, .08, .07, .05]))
    scale = float(np.exp(rng.normal(3.3, 0.6)))  # typical amount
    favourites = list(rng.choice(CATEGORIES[:10], size=4, replace=False))
    own_merchants = {c: [_merchant(rng, c) for _ in range(3)] for c in favourites}
    n = int(rng.integers(20, 60))
    t = START + dt.timedelta(days=float(rng.uniform(0, 30)))
    rows = []
    travelling = 0
    for _ in range(n):
        burst = rng.random() < 0.15
        t += dt.timedelta(minutes=float(rng.uniform(2, 40))) if burst else dt.timedelta(hours=float(rng.exponential(20)))
        category = str(rng.choice(favourites)) if rng.random() < 0.85 else str(rng.choice(CATEGORIES))
        merchant = str(rng.choice(own_merchants[category])) if category in own_merchants and rng.random() < 0.7 \
            else _merchant(rng, category)
        amount = scale * float(np.exp(rng.normal(0, 0.7)))
        if category in ("coffee", "parking", "transit") or rng.random() < 0.05:
            amount = float(rng.uniform(0.8, 6.0))  # small amounts are normal
        if rng.random() < 0.03:
            amount *= float(rng.uniform(4, 10))  # an occasional big purchase
        if travelling == 0 and rng.random() < 0.03:
            travelling = int(rng.integers(2, 6))  # a trip abroad
        country = home
        if travelling:
            country = str(rng.choice(COUNTRIES))
            travelling -= 1
        rows.append((t, round(amount, 2), merchant, category, country))
    if fraud == "testing":
        for _ in range(int(rng.integers(3, 7))):
            t += dt.timedelta(minutes=float(rng.uniform(0.5, 6)))
            category = str(rng.choice(["online", "giftcards", "gaming"]))
            rows.append((t, round(float(rng.uniform(0.5, 2.5)), 2), _merchant(rng, category), category, home))
        t += dt.timedelta(minutes=float(rng.uniform(2, 30)))
        rows.append((t, round(scale * float(rng.uniform(4, 12)), 2), _merchant(rng, "electronics"), "electronics", home))
    elif fraud == "takeover":
        country = str(rng.choice([c for c in COUNTRIES if c != home]))
        new = [c for c in CATEGORIES if c not in favourites]
        for _ in range(int(rng.integers(4, 8))):
            t += dt.timedelta(hours=float(rng.exponential(3)))
            category = str(rng.choice(new))
            rows.append((t, round(scale * float(np.exp(rng.normal(1.0, 0.5))), 2), _merchant(rng, category), category,
                         country))
    return rows


def generate(n_accounts: int, fraud_rate: float, seed: int, labelled: bool, first_id: int = 0):
    """A pyarrow Table of ``n_accounts`` accounts (sorted by account, then time)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("account_id", "ts", "amount", "log_amount", "log_gap", "merchant",
                                             "category", "country", "label")}
    for a in range(n_accounts):
        fraud = None
        if rng.random() < fraud_rate:
            fraud = "testing" if rng.random() < 0.5 else "takeover"
        rows = _account(rng, fraud)
        previous = None
        for ts, amount, merchant, category, country in rows:
            gap = 0.0 if previous is None else (ts - previous).total_seconds() / 60.0
            previous = ts
            cols["account_id"].append(f"acct{first_id + a:07d}")
            cols["ts"].append(ts)
            cols["amount"].append(amount)
            cols["log_amount"].append(float(np.log1p(amount)))
            cols["log_gap"].append(float(np.log1p(gap)))
            cols["merchant"].append(merchant)
            cols["category"].append(category)
            cols["country"].append(country)
            cols["label"].append("fraud" if fraud else "ok")
    if not labelled:
        del cols["label"]
    cols["ts"] = pa.array(cols["ts"], pa.timestamp("s"))
    return pa.table(cols)


def main(argv: list[str] | None = None) -> None:
    import pyarrow.parquet as pq

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--pool", type=int, default=20000, help="unlabelled accounts")
    parser.add_argument("--labelled", type=int, default=2000, help="labelled accounts")
    parser.add_argument("--test", type=int, default=2000, help="held-out labelled accounts")
    parser.add_argument("--fraud-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, n, seed, labelled, first in (("pool", args.pool, args.seed, False, 0),
                                           ("labelled", args.labelled, args.seed + 1, True, 10_000_000),
                                           ("test", args.test, args.seed + 2, True, 20_000_000)):
        table = generate(n, args.fraud_rate, seed, labelled, first)
        pq.write_table(table, args.out / f"{name}.parquet", row_group_size=65_536)
        print(f"{args.out / (name + '.parquet')}: {n} accounts, {table.num_rows} transactions")


if __name__ == "__main__":
    main()
