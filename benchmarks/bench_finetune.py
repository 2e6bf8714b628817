"""Fine-tuning vs frozen heads with ``minilm-l6`` on a task its frozen sentence embeddings barely see.

Task: "anna paid 734 euros for the lamp yesterday" -- label = whether the amount is at least 500.
Sentence embeddings are about topic, not magnitude: the words around the number are random, so the
frozen features carry the label only through how the number's token happens to be embedded.
Measured here (2 shared cores): frozen linear already scores 0.98 validation / 0.97 test on this task,
and 0.99 on a word-order task ("the cat chased the truck" vs the reverse) tried first -- MiniLM's
features keep order and magnitude; a task where they are truly blind is still to be found.
Frozen: every default head in a sweep (best kept).
Fine-tuned: ``finetune(..., head="linear")``. Both are scored on a held-out file through
``evaluate`` (onnxruntime). Prints a table and writes ``benchmarks/results/finetune.json``.

    python benchmarks/bench_finetune.py [--train 600] [--test 300] [--epochs 3] [--lr 1e-4]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, loadavg, machine, save, table  # noqa: E402

NAMES = "anna ben carla david emma felix grace henry iris jack laura mark nina oscar paula".split()
ITEMS = "lamp sofa bike laptop phone watch jacket table camera guitar ticket painting rug kettle".split()
WHEN = ["yesterday", "today", "online", "downtown", "last week", "at the market", "on monday", "in cash"]


def write_task(path: Path, n: int, seed: int) -> Path:
    import random

    rng = random.Random(seed)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(n):
            amount = rng.randrange(500, 1000) if i % 2 else rng.randrange(100, 500)
            text = f"{rng.choice(NAMES)} paid {amount} euros for the {rng.choice(ITEMS)} {rng.choice(WHEN)}"
            writer.writerow([text, "large" if amount >= 500 else "small"])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--backbone", default="minilm-l6")
    args = parser.parse_args()
    home = RESULTS / "home-finetune"
    os.environ["HEADSTART_HOME"] = str(home)
    data = RESULTS / "data" / "finetune"
    data.mkdir(parents=True, exist_ok=True)
    train_csv = write_task(data / "order-train.csv", args.train, 0)
    test_csv = write_task(data / "order-test.csv", args.test, 1)

    from engine.train.api import evaluate, sweep
    from engine.train.finetune import FinetuneOptions, finetune

    facts = machine()
    start = time.perf_counter()
    frozen = sweep(str(train_csv), backbone=args.backbone, save_best=data / "frozen-model")
    frozen_s = time.perf_counter() - start
    rows = [{"model": f"frozen {r['head']}", "val_accuracy": r.get("accuracy"), "seconds": r.get("fit_seconds")}
            for r in frozen.rows]
    frozen_test = evaluate(data / "frozen-model", str(test_csv))["accuracy"]
    rows.append({"model": f"frozen best ({frozen.best})", "val_accuracy": max(r["accuracy"] for r in frozen.rows
                                                                             if "accuracy" in r),
                 "test_accuracy": frozen_test, "seconds": round(frozen_s, 1)})
    start = time.perf_counter()
    result = finetune(str(train_csv), args.backbone, "linear", out=data / "tuned-model",
                      options=FinetuneOptions(epochs=args.epochs, lr=args.lr, batch_size=32), log=print)
    tuned_s = time.perf_counter() - start
    tuned_test = evaluate(result.path, str(test_csv))["accuracy"]
    summary = result.summary()
    rows.append({"model": f"fine-tuned linear ({args.epochs} epochs)", "val_accuracy": result.metrics["accuracy"],
                 "test_accuracy": tuned_test, "seconds": round(tuned_s, 1)})
    print(table(rows, ["model", "val_accuracy", "test_accuracy", "seconds"]))
    path = save("finetune", {"machine": {**facts, "loadavg_end": loadavg()}, "args": vars(args), "rows": rows,
                             "finetune": summary, "frozen_test_accuracy": frozen_test,
                             "finetuned_test_accuracy": tuned_test})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
