"""Deterministic benchmark inputs: a mixed-length text corpus and a folder of JPEGs of mixed sizes.

Texts are composed from word lists and sentence templates (no downloads): lengths follow a
log-normal (median ~15 words, about 20 MiniLM tokens) with a long tail past 256 tokens, and
every text is unique, so no run is helped by the store's de-duplication.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

SUBJECTS = ("the customer", "our bank", "a new user", "the support team", "my neighbour", "the delivery driver",
            "this merchant", "the hospital", "a small startup", "the city council", "the research group",
            "the train operator", "an old friend", "the landlord", "the museum", "the weather service",
            "a volunteer", "the school board", "the software update", "the insurance company")
VERBS = ("reported", "cancelled", "approved", "questioned", "refunded", "delayed", "announced", "blocked",
         "reviewed", "confirmed", "ignored", "repaired", "shipped", "rejected", "measured", "published",
         "described", "scheduled", "investigated", "celebrated")
OBJECTS = ("a suspicious payment", "the broken screen", "two late parcels", "an urgent transfer",
           "the quarterly results", "a locked account", "the new password policy", "three missing invoices",
           "a flight to Lisbon", "the heating bill", "an unexpected refund", "the roadworks on Elm Street",
           "a vaccine trial", "the annual budget", "an open-source library", "the concert tickets",
           "a chemistry exam", "the harvest forecast", "a faulty charger", "the data breach")
TAILS = ("after midnight", "without any warning", "for the third time this month", "because of the storm",
         "despite several complaints", "on Tuesday morning", "with great enthusiasm", "in under five minutes",
         "to everyone's surprise", "before the deadline", "at the last minute", "as promised",
         "while the manager was away", "during the holiday season", "according to the latest report")
WORDS = ("refund card fraud payment login password delivery late broken screen bank transfer account locked help "
         "urgent invoice receipt order parcel courier address weather rain sunny cold forecast river bridge train "
         "station ticket platform museum painting gallery concert guitar album lyrics election vote policy "
         "minister budget tax school teacher exam student library science protein enzyme galaxy telescope orbit "
         "network server latency database query index cache memory thread kernel compiler python rust garden "
         "tomato harvest soil recipe flour butter oven coffee breakfast hospital nurse doctor vaccine clinic "
         "football goal referee stadium marathon bicycle helmet mountain glacier ocean harbour fishing").split()
PUNCT = (".", ".", ".", "!", "?", ";", ",")


def _sentence(rng: random.Random) -> str:
    if rng.random() < 0.6:
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        if rng.random() < 0.5:
            s += f" {rng.choice(TAILS)}"
        return s[0].upper() + s[1:] + rng.choice(PUNCT[:4])
    n = rng.randint(3, 12)
    words = [rng.choice(WORDS) for _ in range(n)]
    if rng.random() < 0.3:
        words.insert(rng.randrange(n), str(rng.randint(1, 99999)))
    return " ".join(words).capitalize() + rng.choice(PUNCT)


def _text(rng: random.Random, target_words: int) -> str:
    parts: list[str] = []
    count = 0
    while count < target_words:
        s = _sentence(rng)
        parts.append(s)
        count += len(s.split())
    return " ".join(parts)


def make_texts(n: int, seed: int = 0, short: bool = False) -> list[str]:
    """``n`` unique texts. ``short``: 4-14 words each; otherwise log-normal lengths with a long tail."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        if short:
            words = rng.randint(4, 14)
            text = " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + rng.choice(PUNCT)
        else:
            words = 2 + int(math.exp(rng.gauss(math.log(9), 0.75)))
            if rng.random() < 0.02:  # the long tail: well past MiniLM's 256-token truncation
                words = rng.randint(220, 420)
            text = _text(rng, min(words, 420))
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def write_csv(texts: list[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text"])
        writer.writerows([t] for t in texts)
    return path


def write_labelled_csv(rows: list[tuple[str, str]], path: Path) -> Path:
    """A ``text,label`` CSV of ``(text, label)`` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def write_lines(texts: list[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


#: (width, height, share): mostly camera-ish sizes, a fifth of them large 1920x1440 photos.
IMAGE_SIZES = ((640, 480, 0.45), (480, 640, 0.1), (1024, 768, 0.15), (1920, 1440, 0.2), (320, 240, 0.1))


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs (quality 90) of mixed sizes with smooth gradients, shapes and noise; reused if present."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = [(w, h) for w, h, share in IMAGE_SIZES for _ in range(round(share * n))]
    sizes = (sizes + [IMAGE_SIZES[0][:2]] * n)[:n]
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"img_{i:04d}_{w}x{h}.jpg"
        paths.append(path)
        if path.exists():
            continue
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(0, 255, size=3)
        slope = rng.uniform(-0.2, 0.2, size=(3, 2)) * (640 / max(w, h))
        img = np.stack([base[c] + slope[c, 0] * xx + slope[c, 1] * yy for c in range(3)], axis=-1)
        img += rng.normal(0, 12, size=(h, w, 3)).astype(np.float32)
        im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(3, 12))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        im.save(path, "JPEG", quality=90)
    return paths
