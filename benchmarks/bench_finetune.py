"""Fine-tuning vs frozen heads with ``efficientnet-lite0`` on a task its frozen features cannot see: mirror images.

Task ("mirror"): synthetic Pillow images (deterministic seeds) of a chiral shape -- arrow, flag,
chevron, the letters F/L, or a glyph of R F J 4 K 7 -- drawn either as is (label ``right``) or
mirrored (``left``), on random image sizes, backgrounds (solid, gradient, noise), colours,
positions, rotations (+-25 degrees) and symmetric distractors (discs, squares). ImageNet training
uses random horizontal flips, so the pooled features of ``efficientnet-lite0`` are close to
mirror-invariant: every frozen head stays near chance, while fine-tuning the top blocks learns the
direction. (Tried before with ``minilm-l6``: number magnitude and word order tasks, where frozen
heads already scored 0.97-0.99 -- MiniLM's features keep both, so they showed nothing.)

Frozen: every default head (linear, mlp, knn, LogisticRegression) trained on the cached features
of the training folder (validation split as in a sweep, then refitted on all rows) and scored on
the held-out test folder. Fine-tuned: ``finetune(..., head="linear")`` with ``--unfreeze last:N``,
starting from the frozen linear head, early stopping on the same validation split, exported to
ONNX (parity-gated) and scored on the test folder through ``evaluate`` (onnxruntime).
Prints a table and writes ``benchmarks/results/finetune.json`` (with ``os.getloadavg()``: the
machine is shared, and epoch times follow its load).

    python benchmarks/bench_finetune.py [--train 640] [--test 320] [--epochs 5] [--unfreeze last:4]
                                        [--lr 1e-3] [--batch-size 16] [--patience 3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import WORK, loadavg, machine, save, table  # noqa: E402

HEADS = ("linear", "mlp", "knn", "sklearn:LogisticRegression(max_iter=1000)")
# right-facing chiral polygons in a unit box (x to the right, y down)
SHAPES = {
    "arrow": [(0, .4), (.55, .4), (.55, .15), (1, .5), (.55, .85), (.55, .6), (0, .6)],
    "flag": [(.1, 0), (.22, 0), (.22, .08), (.95, .3), (.22, .52), (.22, 1), (.1, 1)],
    "F": [(.15, 0), (.85, 0), (.85, .18), (.37, .18), (.37, .42), (.75, .42), (.75, .6), (.37, .6), (.37, 1),
          (.15, 1)],
    "L": [(.2, 0), (.42, 0), (.42, .8), (.9, .8), (.9, 1), (.2, 1)],
    "chevron": [(.1, 0), (.45, 0), (.95, .5), (.45, 1), (.1, 1), (.6, .5)],
}
GLYPHS = "RFJ4K7"


def _colour(rng: random.Random, far_from: tuple[int, ...] | None = None) -> tuple[int, int, int]:
    while True:
        c = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if far_from is None or sum(abs(a - b) for a, b in zip(c, far_from)) > 200:
            return c


def _background(rng: random.Random, w: int, h: int) -> tuple[Any, tuple[int, int, int]]:
    from PIL import Image

    base = _colour(rng)
    kind = rng.choice(("solid", "gradient", "noise"))
    if kind == "solid":
        return Image.new("RGB", (w, h), base), base
    if kind == "gradient":
        ramp = Image.linear_gradient("L").rotate(rng.choice((0, 90, 180, 270))).resize((w, h))
        return Image.composite(Image.new("RGB", (w, h), base), Image.new("RGB", (w, h), _colour(rng)), ramp), base
    noise = Image.frombytes("L", (w, h), rng.randbytes(w * h)).convert("RGB")
    return Image.blend(Image.new("RGB", (w, h), base), noise, 0.15), base


def mirror_image(rng: random.Random, mirrored: bool) -> tuple[Any, str]:
    """One image: a chiral shape (mirrored or not) on a random background with symmetric distractors."""
    from PIL import Image, ImageDraw, ImageFont

    w, h = rng.randrange(200, 360), rng.randrange(200, 360)
    img, bg = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    side = min(w, h)
    for _ in range(rng.randrange(0, 5)):
        r, x, y, fill = rng.randrange(side // 20, side // 8), rng.randrange(w), rng.randrange(h), _colour(rng)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=fill)
    size = rng.uniform(0.35, 0.6) * side  # inside the centre crop (shorter side 256, crop 224)
    cx, cy = w / 2 + rng.uniform(-0.15, 0.15) * side, h / 2 + rng.uniform(-0.15, 0.15) * side
    shape = rng.choice([*SHAPES, "glyph"])
    mask = Image.new("L", (int(size) + 2, int(size) + 2), 0)
    if shape == "glyph":
        font = ImageFont.load_default(size=int(size * 0.9))
        ImageDraw.Draw(mask).text((size / 2, size / 2), rng.choice(GLYPHS), font=font, fill=255, anchor="mm")
    else:
        ImageDraw.Draw(mask).polygon([(x * size, y * size) for x, y in SHAPES[shape]], fill=255)
    if mirrored:
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mask = mask.rotate(rng.uniform(-25, 25), resample=Image.Resampling.BILINEAR, expand=True)
    img.paste(Image.new("RGB", mask.size, _colour(rng, bg)), (int(cx - mask.width / 2), int(cy - mask.height / 2)),
              mask)
    return img, shape


def write_mirror_task(root: Path, n: int, seed: int) -> Path:
    """``root/right`` and ``root/left`` (balanced), PNGs, deterministic in ``seed``."""
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(seed)
    for label in ("left", "right"):
        (root / label).mkdir(parents=True)
    for i in range(n):
        mirrored = i % 2 == 1
        img, shape = mirror_image(rng, mirrored)
        img.save(root / ("left" if mirrored else "right") / f"{seed}-{i:05d}-{shape}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=640, help="training images (a validation split is taken from them)")
    parser.add_argument("--test", type=int, default=320, help="held-out test images")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--unfreeze", default="last:4")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    args = parser.parse_args()
    home = WORK / "home-finetune"
    shutil.rmtree(home, ignore_errors=True)  # cold: the base export and every embedding are timed
    os.environ["HEADSTART_HOME"] = str(home)
    data = WORK / "data" / "finetune-mirror"
    facts = machine()
    started = time.perf_counter()
    train_dir = write_mirror_task(data / "train", args.train, 0)
    test_dir = write_mirror_task(data / "test", args.test, 1)
    stages = {"generate_s": round(time.perf_counter() - started, 1)}

    from headstart.engine.train.api import evaluate, train
    from headstart.engine.train.finetune import FinetuneOptions, finetune

    rows: list[dict[str, Any]] = []
    for head in HEADS:
        start = time.perf_counter()
        trained = train(str(train_dir), head, backbone=args.backbone, out=data / f"frozen-{head.split(':')[0]}")
        test = evaluate(trained.path, str(test_dir))
        rows.append({"model": f"frozen {head.split('(')[0]}", "val_accuracy": trained.metrics["accuracy"],
                     "test_accuracy": test["accuracy"], "seconds": round(time.perf_counter() - start, 1)})
    stages["frozen_s"] = round(time.perf_counter() - started - stages["generate_s"], 1)
    best_frozen = max(rows, key=lambda r: r["val_accuracy"])  # what a sweep would pick
    options = FinetuneOptions(unfreeze=args.unfreeze, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                              patience=args.patience)
    start = time.perf_counter()
    result = finetune(str(train_dir), args.backbone, "linear", out=data / "tuned-model", options=options,
                      log=lambda message: print(f"[{time.perf_counter() - start:6.1f}s] {message}", flush=True))
    tuned_test = evaluate(result.path, str(test_dir))["accuracy"]
    stages["finetune_s"] = round(time.perf_counter() - start, 1)
    rows.append({"model": f"fine-tuned linear ({args.unfreeze}, {result.outcome.epochs_run} epochs, "
                          f"best {result.outcome.best_epoch})",
                 "val_accuracy": result.metrics["accuracy"], "test_accuracy": tuned_test,
                 "seconds": stages["finetune_s"]})
    stages["total_s"] = round(time.perf_counter() - started, 1)
    print(table(rows, ["model", "val_accuracy", "test_accuracy", "seconds"]))
    margin = tuned_test - max(r["test_accuracy"] for r in rows[:-1])
    print(f"fine-tuned minus the best frozen head on the held-out test split: {margin:+.4f} "
          f"(best frozen by validation: {best_frozen['model']}); {stages}; loadavg {loadavg()}")
    path = save("finetune", {"task": "mirror", "machine": {**facts, "loadavg_end": loadavg()}, "args": vars(args),
                             "n_train": args.train, "n_test": args.test, "rows": rows, "stages": stages,
                             "best_frozen_by_validation": best_frozen["model"],
                             "best_frozen_test_accuracy": max(r["test_accuracy"] for r in rows[:-1]),
                             "finetuned_test_accuracy": tuned_test, "test_margin": round(margin, 6),
                             "finetune": result.summary()})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
