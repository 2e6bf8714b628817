"""Choosing well on data not seen: the linear head's old and new strength choice, calibration, and
scikit-learn's ``LogisticRegression()`` with its defaults, on the same frozen features of real public data.

    python benchmarks/bench_quality.py                 # every dataset found on this machine
    python benchmarks/bench_quality.py --max-per-class 60 --only fortunes,icons

Datasets (offline, public, loaded from Debian packages on this machine; cached under benchmarks/.work/quality):

* ``debian-sections``: package descriptions (``apt-cache dumpavail``) → Section, 8 sections; trained on
  packages named a–m, tested on n–z (a shifted test set, as names cluster by family: lib*, python3-*, ...).
* ``debian-games-science``: the same descriptions, games vs science, a random stratified split.
* ``fortunes``: fortune cookies (Debian ``fortunes``/``fortunes-min``) → their file (category), random split.
* ``icons``: Adwaita 48×48 icons (Debian ``adwaita-icon-theme``) → their context folder, random split,
  through EfficientNet-Lite0 (small: the theme has few full-colour icons per context at that size).
* ``digits``: scikit-learn's bundled 8×8 handwritten digits drawn as 64×64 PNGs, through EfficientNet-Lite0.

Text goes through the shipped MiniLM, images through EfficientNet-Lite0. On each dataset: ``old`` = the
linear head as of commit 0bc6622 (L2 chosen on one 80/20 split by accuracy, then log-loss), ``new`` = the
current one (stratified 5-fold mean log-loss, one-SE rule), ``new + calibration`` = ``headstart.train``'s
model (temperature fitted on validation), ``sklearn`` = ``LogisticRegression()``. Test accuracy, log-loss and
expected calibration error. Writes benchmarks/results/quality.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import HOME, WORK, machine, save  # noqa: E402
from _corpus import write_labelled_csv  # noqa: E402

DATA = WORK / "quality"
OLD_COMMIT = "0bc6622"  # the linear head before the k-fold choice
SECTIONS = ("games", "science", "sound", "graphics", "net", "admin", "text", "x11")


def _packages() -> list[tuple[str, str, str]]:
    """(name, section, description) of every package apt knows (run `apt-get update` first)."""
    text = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    out = []
    for block in text.split("\n\n"):
        name = re.search(r"^Package: (.+)$", block, re.M)
        section = re.search(r"^Section: (.+)$", block, re.M)
        desc = re.search(r"^Description(?:-en)?: (.+(?:\n .+)*)", block, re.M)
        if name and section and desc:
            words = " ".join(line.strip() for line in desc.group(1).splitlines() if line.strip() != ".")
            out.append((name.group(1), section.group(1).split("/")[-1], " ".join(words.split()[:60])))
    return sorted(set(out))


def _balanced(rows: list[tuple[str, str]], per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for label in sorted({r[1] for r in rows}):
        mine = [r for r in rows if r[1] == label]
        out += [mine[i] for i in sorted(rng.choice(len(mine), min(per_class, len(mine)), replace=False))]
    return out


def _split(rows: list[tuple[str, str]], test_share: float, seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in sorted({r[1] for r in rows}):
        mine = [r for r in rows if r[1] == label]
        order = rng.permutation(len(mine))
        cut = int(round(len(mine) * test_share))
        test += [mine[i] for i in order[:cut]]
        train += [mine[i] for i in order[cut:]]
    return train, test


def debian_sections(per_class: int) -> tuple[Path, Path] | None:
    pkgs = [p for p in _packages() if p[1] in SECTIONS]
    if not pkgs:
        return None
    first = [(d, s) for n, s, d in pkgs if n[0] <= "m"]
    second = [(d, s) for n, s, d in pkgs if n[0] > "m"]
    folder = DATA / "debian-sections"
    return (write_labelled_csv(_balanced(first, per_class, 0), folder / "train.csv"),
            write_labelled_csv(_balanced(second, per_class // 2, 1), folder / "test.csv"))


def debian_games_science(per_class: int) -> tuple[Path, Path] | None:
    rows = [(d, s) for _, s, d in _packages() if s in ("games", "science")]
    if not rows:
        return None
    train, test = _split(_balanced(rows, per_class * 3 // 2, 2), 1 / 3, 3)
    folder = DATA / "debian-games-science"
    return write_labelled_csv(train, folder / "train.csv"), write_labelled_csv(test, folder / "test.csv")


def fortunes(per_class: int) -> tuple[Path, Path] | None:
    base = Path("/usr/share/games/fortunes")
    if not base.is_dir():
        return None
    rows = []
    for f in sorted(base.iterdir()):
        if f.suffix or not f.is_file() or f.is_symlink():
            continue
        cookies = [" ".join(c.split()) for c in f.read_text(errors="replace").split("\n%\n") if 20 < len(c) < 600]
        rows += [(c, f.name) for c in cookies]
    counts = {label: sum(1 for r in rows if r[1] == label) for label in {r[1] for r in rows}}
    keep = sorted(counts, key=lambda k: -counts[k])[:8]
    rows = [r for r in rows if r[1] in keep and counts[r[1]] >= 60]
    if not rows:
        return None
    train, test = _split(_balanced(rows, per_class * 3 // 2, 4), 1 / 3, 5)
    folder = DATA / "fortunes"
    return write_labelled_csv(train, folder / "train.csv"), write_labelled_csv(test, folder / "test.csv")


def icons(per_class: int) -> tuple[Path, Path] | None:
    base = Path("/usr/share/icons/Adwaita/48x48")
    contexts = ("actions", "categories", "devices", "emblems", "emotes", "mimetypes", "places", "status")
    if not base.is_dir():
        return None
    folder = DATA / "icons"
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(6)
    for context in contexts:
        files = sorted(p for p in (base / context).glob("*.png") if "symbolic" not in p.name)
        files = [files[i] for i in sorted(rng.choice(len(files), min(len(files), per_class * 3 // 2), replace=False))]
        order = rng.permutation(len(files))
        cut = int(round(len(files) / 3))
        for part, picked in (("test", order[:cut]), ("train", order[cut:])):
            target = folder / part / context
            target.mkdir(parents=True, exist_ok=True)
            for i in picked:
                shutil.copyfile(files[i], target / files[i].name)
    return folder / "train", folder / "test"


def digits(per_class: int) -> tuple[Path, Path] | None:
    """scikit-learn's bundled 8×8 handwritten digits, drawn as 64×64 PNGs, random split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    folder = DATA / "digits"
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(7)
    for digit in range(10):
        rows = np.flatnonzero(data.target == digit)
        rows = rows[rng.permutation(len(rows))[: per_class * 3 // 2]]
        cut = int(round(len(rows) / 3))
        for part, picked in (("test", rows[:cut]), ("train", rows[cut:])):
            target = folder / part / str(digit)
            target.mkdir(parents=True, exist_ok=True)
            for i in picked:
                pixels = (255 - data.images[i] * 255 / 16).astype(np.uint8)
                Image.fromarray(pixels).resize((64, 64), Image.NEAREST).convert("RGB").save(target / f"{i}.png")
    return folder / "train", folder / "test"


DATASETS: dict[str, tuple[Callable[[int], Any], str]] = {
    "debian-sections": (debian_sections, "minilm-l6"),
    "debian-games-science": (debian_games_science, "minilm-l6"),
    "fortunes": (fortunes, "minilm-l6"),
    "icons": (icons, "efficientnet-lite0"),
    "digits": (digits, "efficientnet-lite0"),
}


def old_linear() -> Any:
    """The LinearHead class of commit OLD_COMMIT (loaded from git into benchmarks/.work)."""
    path = DATA / "linear_old.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(subprocess.run(["git", "show", f"{OLD_COMMIT}:plugins/heads/linear.py"], cwd=ROOT,
                                   capture_output=True, text=True, check=True).stdout)
    spec = importlib.util.spec_from_file_location("linear_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LinearHead


def _scores(proba: np.ndarray, classes: Any, y: np.ndarray) -> dict[str, float]:
    from headstart.engine.train.calibration import log_loss, reliability

    index = {str(c): i for i, c in enumerate(classes)}
    y_idx = np.asarray([index.get(str(v), -1) for v in y])
    keep = y_idx >= 0
    p = np.asarray(proba, np.float64)
    return {"accuracy": round(float(np.mean(p.argmax(1) == y_idx)), 4),
            "log_loss": round(log_loss(p[keep], y_idx[keep]), 4),
            "ece": round(reliability(p[keep], y_idx[keep])["ece"], 4)}


def run_dataset(name: str, train_path: Path, test_path: Path, backbone: str) -> dict[str, Any]:
    import time

    from sklearn.linear_model import LogisticRegression

    from headstart.engine.embed.pipeline import embed
    from headstart.engine.heads.features import FeatureSet
    from headstart.engine.train.api import train
    from headstart.plugins.heads.linear import LinearHead

    tr = FeatureSet.coerce(embed(str(train_path), backbone, progress=False))
    te = FeatureSet.coerce(embed(str(test_path), backbone, progress=False))
    Xtr, ytr = np.asarray(tr.vectors, np.float32), np.asarray([str(v) for v in tr.labels])
    Xte, yte = np.asarray(te.vectors, np.float32), np.asarray([str(v) for v in te.labels])
    rows = []
    for label, make in (("old linear (one 80/20 split, accuracy first)", old_linear()),
                        ("new linear (5-fold log-loss, one-SE rule)", LinearHead),
                        ("sklearn LogisticRegression() defaults", LogisticRegression)):
        start = time.perf_counter()
        est = make().fit(Xtr, ytr)
        fit_s = time.perf_counter() - start
        row = {"model": label, "fit_s": round(fit_s, 3), **_scores(est.predict_proba(Xte), est.classes_, yte)}
        if hasattr(est, "l2_"):
            row["l2"] = float(est.l2_)
        rows.append(row)
    model = train(FeatureSet.from_arrays(Xtr, ytr), "linear").model
    calibration = model.manifest["metrics"].get("calibration") or {}
    rows.append({"model": "new linear + calibration (headstart train)",
                 **_scores(model.predict(FeatureSet.from_arrays(Xte)).proba, model.classes, yte),
                 "temperature": calibration.get("temperature")})
    for r in rows:
        print(f"  {r['model']:<48} accuracy {r['accuracy']:.4f}  log-loss {r['log_loss']:.4f}  ECE {r['ece']:.4f}",
              flush=True)
    return {"name": name, "backbone": backbone, "n_train": len(ytr), "n_test": len(yte),
            "classes": len(set(ytr.tolist())), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-per-class", type=int, default=120, help="training items per class (at most)")
    parser.add_argument("--only", default=None, help="comma-separated dataset names")
    parser.add_argument("--name", default="quality", help="result file: benchmarks/results/<name>.json")
    args = parser.parse_args()
    os.environ.setdefault("HEADSTART_HOME", str(HOME))
    facts = machine()
    results: dict[str, Any] = {"machine": facts, "max_per_class": args.max_per_class, "old_commit": OLD_COMMIT,
                               "datasets": [], "skipped": []}
    wanted = args.only.split(",") if args.only else list(DATASETS)
    for name in wanted:
        loader, backbone = DATASETS[name]
        paths = loader(args.max_per_class)
        if paths is None:
            print(f"{name}: not available on this machine (see the module docstring), skipped", flush=True)
            results["skipped"].append(name)
            continue
        print(f"{name} ({backbone})", flush=True)
        results["datasets"].append(run_dataset(name, *paths, backbone))
    old = [d["rows"][0]["accuracy"] for d in results["datasets"]]
    new = [d["rows"][1]["accuracy"] for d in results["datasets"]]
    sk = [d["rows"][2]["accuracy"] for d in results["datasets"]]
    if old:
        results["summary"] = {"mean_accuracy_old": round(float(np.mean(old)), 4),
                              "mean_accuracy_new": round(float(np.mean(new)), 4),
                              "mean_accuracy_sklearn_defaults": round(float(np.mean(sk)), 4),
                              "worst_new_minus_sklearn_pt": round(100 * min(n - s for n, s in zip(new, sk)), 2)}
        print(results["summary"], flush=True)
    print(f"written {save(args.name, results)}")


if __name__ == "__main__":
    main()
