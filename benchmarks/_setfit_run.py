"""Run by benchmarks/bench_fewshot.py inside its SetFit venv: train SetFit (library defaults) on a CSV, score a test CSV.

Usage: python _setfit_run.py MODEL_DIR TRAIN_CSV TEST_CSV SEED  ->  one JSON line: accuracy, train_seconds.
"""

import csv
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def read(path):
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def main() -> None:
    import torch
    from datasets import Dataset

    if os.environ.get("BENCH_TORCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_TORCH_THREADS"]))
    from setfit import SetFitModel, Trainer, TrainingArguments

    model_dir, train_csv, test_csv, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    x, y = read(train_csv)
    tx, ty = read(test_csv)
    started = time.perf_counter()
    model = SetFitModel.from_pretrained(model_dir)
    trainer = Trainer(model=model, args=TrainingArguments(seed=seed, report_to="none"),
                      train_dataset=Dataset.from_dict({"text": x, "label": y}))
    trainer.train()
    seconds = time.perf_counter() - started
    pred = list(model.predict(tx, batch_size=64))
    acc = sum(str(p) == t for p, t in zip(pred, ty)) / len(ty)
    print(json.dumps({"accuracy": acc, "train_seconds": seconds}))


if __name__ == "__main__":
    main()
