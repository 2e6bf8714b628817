"""Offline public few-shot text tasks for benchmarks/bench_fewshot.py (cached under benchmarks/.work/fewshot).

* ``debian6``: Debian package short descriptions (``apt-cache dumpavail``) labelled with their archive
  Section, six sections: games, science, sound, graphics, mail, web.
* ``debian-net-web``: the binary pair net vs web (close topics: frozen features struggle).
* ``fortunes-short``: short one-line fortune cookies (Debian ``fortunes``/``fortunes-min``, files under
  /usr/share/games/fortunes/ are the categories), science vs politics: short texts, two classes, like a
  binary sentiment set (at most 120 characters and two lines each).

Two more tasks read the public files of the classic few-shot sets from ``$BENCH_FEWSHOT_DATA`` (a folder
holding them under the names their original distributions use; nothing is downloaded):

* ``rt-polarity``: binary movie-review sentiment (Pang & Lee 2005, ``rt-polaritydata/rt-polarity.{pos,neg}``,
  5331 each, from the Cornell "sentence polarity dataset v1.0"); a fixed 533 per class are the test set.
* ``trec6``: question type, the six coarse TREC classes (Li & Roth 2002, ``trec/train_5500.label`` to sample
  from, ``trec/TREC_10.label``: the whole official 500-question test set, whatever ``n_test`` says).
* ``sst2``: binary sentence-level Stanford Sentiment Treebank (Socher et al. 2013, the split of Kim 2014 as
  ``sst2/stsa.binary.{train,test}``, one ``LABEL TEXT`` line each, 1 = positive; 6920 train to sample from, the
  whole 1821-sentence test set, whatever ``n_test`` says: the set SetFit's paper calls SST-2).

Packages whose names end in -dev/-doc/-dbg/-data/-common (templated descriptions) are dropped, and so
is every description that occurs more than once. ``sample`` draws k training items per class and a fixed
test set (disjoint) per seed.
"""

from __future__ import annotations

import csv
import os
import random
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

WORK = Path(__file__).resolve().parent / ".work" / "fewshot"
TASKS = {"debian6": ("games", "science", "sound", "graphics", "mail", "web"), "debian-net-web": ("net", "web"),
         "fortunes-short": ("science", "politics"),
         "rt-polarity": ("neg", "pos"), "trec6": ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"), "sst2": ("neg", "pos")}
EXTERNAL = {"rt-polarity": ("rt-polaritydata/rt-polarity.pos", "rt-polaritydata/rt-polarity.neg"),
            "trec6": ("trec/train_5500.label", "trec/TREC_10.label"),
            "sst2": ("sst2/stsa.binary.train", "sst2/stsa.binary.test")}
RT_TEST_PER_CLASS = 533
FORTUNES = Path("/usr/share/games/fortunes")
SHORT_CHARS = 120
SKIP_SUFFIXES = ("-dev", "-doc", "-dbg", "-data", "-common")


def _debian() -> dict[str, list[str]]:
    path = WORK / "debian.tsv"
    if not path.is_file():
        WORK.mkdir(parents=True, exist_ok=True)
        text = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
        rows = []
        for stanza in text.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
            name, section, desc = fields.get("Package"), fields.get("Section"), fields.get("Description")
            if name and section and desc and not name.endswith(SKIP_SUFFIXES):
                rows.append((section.rsplit("/", 1)[-1], desc.strip()))
        counts = Counter(d for _, d in rows)
        with open(path, "w", newline="") as fh:
            csv.writer(fh, delimiter="\t").writerows(sorted({r for r in rows if counts[r[1]] == 1}))
    out: dict[str, list[str]] = defaultdict(list)
    with open(path, newline="") as fh:
        for section, desc in csv.reader(fh, delimiter="\t"):
            out[section].append(desc)
    return out


def _fortunes(categories: tuple[str, ...]) -> dict[str, list[str]]:
    """Short fortunes of each category file, whitespace collapsed, duplicates (across categories too) dropped."""
    if not FORTUNES.is_dir():
        raise RuntimeError(f"{FORTUNES} is missing: apt-get install fortunes fortunes-min")
    found = {c: [" ".join(t.split()) for t in (FORTUNES / c).read_text(encoding="latin-1").split("\n%\n")
                 if 10 < len(t.strip()) <= SHORT_CHARS and t.strip().count("\n") <= 1] for c in categories}
    counts = Counter(t for texts in found.values() for t in texts)
    return {c: sorted({t for t in texts if counts[t] == 1}) for c, texts in found.items()}


def _external(task: str) -> list[Path]:
    """The files of an external task, or an error naming what to put where."""
    root = os.environ.get("BENCH_FEWSHOT_DATA")
    paths = [Path(root or ".") / name for name in EXTERNAL[task]]
    if not root or not all(p.is_file() for p in paths):
        raise RuntimeError(f"task {task} reads {', '.join(EXTERNAL[task])} under $BENCH_FEWSHOT_DATA "
                           f"({root or 'not set'}): put the public files there (see benchmarks/_fewshot_data.py)")
    return paths


def _lines(path: Path, encoding: str = "latin-1") -> list[str]:
    return [" ".join(line.split()) for line in path.read_text(encoding=encoding).splitlines() if line.strip()]


def _trec(line: str) -> tuple[str, str]:
    label, text = line.split(" ", 1)
    return text, label.split(":", 1)[0]


def _sst2(line: str) -> tuple[str, str]:
    label, text = line.split(" ", 1)
    return text, TASKS["sst2"][int(label)]


def sample(task: str, k: int, seed: int, n_test: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test) lists of (text, label): ``k`` per class for training, ``n_test`` per class for testing
    (``rt-polarity``: 533 per class, ``trec6`` and ``sst2``: their official test sets)."""
    rng = random.Random(f"{task}:{seed}")
    if task in ("trec6", "sst2"):
        parse, encoding = (_trec, "latin-1") if task == "trec6" else (_sst2, "utf-8")
        train_path, test_path = _external(task)
        pool = [parse(line) for line in _lines(train_path, encoding)]
        train = [row for label in TASKS[task] for row in rng.sample(sorted(r for r in pool if r[1] == label), k)]
        return train, [parse(line) for line in _lines(test_path, encoding)]
    if task == "rt-polarity":
        by_section = {label: sorted(set(_lines(path))) for label, path in zip(("pos", "neg"), _external(task))}
        n_test = RT_TEST_PER_CLASS
    else:
        by_section = _fortunes(TASKS[task]) if task.startswith("fortunes") else _debian()
    test_rng = random.Random(f"{task}:test")
    train, test = [], []
    for label in TASKS[task]:
        texts = sorted(by_section[label])
        test_rng.shuffle(texts)
        held, pool = texts[:n_test], texts[n_test:]
        test += [(t, label) for t in held]
        train += [(t, label) for t in rng.sample(pool, k)]
    return train, test
