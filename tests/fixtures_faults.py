"""Generators of bad and odd input files (faults.md, Images and Text), as plain functions.

Image generators return the file's bytes; ``write_*`` helpers put files on disk. Everything
is deterministic (fixed seeds) so content keys are stable across runs.
"""

from __future__ import annotations

import io
import json
import os
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# -- images -------------------------------------------------------------------------


def pattern(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB test pattern (gradients + noise) that survives resizing recognisably."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(w + h - 2, 1)], -1)
    return np.clip(arr + rng.integers(-8, 9, arr.shape), 0, 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(w: int = 64, h: int = 48, seed: int = 0, quality: int = 90, **kw) -> bytes:
    return encode(Image.fromarray(pattern(w, h, seed)), "JPEG", quality=quality, **kw)


def png(w: int = 64, h: int = 48, seed: int = 0) -> bytes:
    return encode(Image.fromarray(pattern(w, h, seed)), "PNG")


def corrupt_jpeg(seed: int = 0) -> bytes:
    """A real JPEG's headers (up to and including the SOS segment) followed by random entropy data."""
    data = jpeg(128, 96, seed)
    sos = data.index(b"\xff\xda")
    body = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    rng = np.random.default_rng(seed)
    return data[:body] + rng.bytes(len(data) - body - 2) + b"\xff\xd9"


def truncated(data: bytes, fraction: float = 0.6) -> bytes:
    return data[: int(len(data) * fraction)]


def cmyk_jpeg(w: int = 64, h: int = 48) -> bytes:
    return encode(Image.fromarray(pattern(w, h)).convert("CMYK"), "JPEG", quality=95)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(arr: np.ndarray, color_type: int, bit_depth: int = 8, declared: tuple[int, int] | None = None) -> bytes:
    """A PNG written by hand (16-bit colour, or a header declaring another size than the data)."""
    h, w = arr.shape[:2]
    dw, dh = declared or (w, h)
    big = arr.astype(">u2" if bit_depth == 16 else "u1")
    rows = b"".join(b"\x00" + big[i].tobytes() for i in range(h))
    ihdr = struct.pack(">IIBBBBB", dw, dh, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


def png16_gray(w: int = 64, h: int = 48) -> bytes:
    """16-bit grayscale ramp using the whole 0..65535 range (clipping at 255 would make it all white)."""
    ramp = np.linspace(0, 65535, w).round().astype(np.uint16)
    return raw_png(np.tile(ramp, (h, 1)), color_type=0, bit_depth=16)


def png16_rgb(w: int = 64, h: int = 48) -> bytes:
    return raw_png(pattern(w, h).astype(np.uint16) * 257, color_type=2, bit_depth=16)


def grayscale_png(w: int = 64, h: int = 48) -> bytes:
    return encode(Image.fromarray(pattern(w, h)).convert("L"), "PNG")


def palette_transparent_png(w: int = 64, h: int = 48) -> bytes:
    """Palette image whose index 0 is fully transparent and covers the left half."""
    im = Image.fromarray(pattern(w, h)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    arr = np.asarray(im).copy()
    arr[arr == 0] = 1
    arr[:, : w // 2] = 0
    out = Image.fromarray(arr, "P")
    out.putpalette(im.getpalette())
    return encode(out, "PNG", transparency=0)


def rgba_png(w: int = 64, h: int = 48, alpha: int = 0) -> bytes:
    arr = np.dstack([pattern(w, h), np.full((h, w), alpha, np.uint8)])
    return encode(Image.fromarray(arr, "RGBA"), "PNG")


def exif_jpeg(orientation: int, w: int = 80, h: int = 40) -> bytes:
    """A ``w`` x ``h`` JPEG (red left half) carrying EXIF orientation ``orientation``."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())


def bomb_png(w: int = 100_000, h: int = 100_000) -> bytes:
    """A tiny PNG whose header declares ``w`` x ``h`` pixels."""
    return raw_png(np.zeros((1, 1), np.uint8), color_type=0, declared=(w, h))


def tiny_png() -> bytes:
    return encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")


def strip_png(w: int = 3, h: int = 100_000) -> bytes:
    return encode(Image.fromarray(pattern(w, h)), "PNG")


def animated_gif() -> bytes:
    """Two frames: red then blue."""
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def multipage_tiff() -> bytes:
    """Two pages: green then black."""
    pages = [Image.new("RGB", (32, 32), c) for c in ((0, 255, 0), (0, 0, 0))]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


HTML_BYTES = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>nope</body></html>\n"
PDF_BYTES = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< >>\n%%EOF\n"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def odd_tree(root: Path) -> dict[str, Path]:
    """A labelled image folder with odd names, an NFD-named class, a non-image, a hidden file and a symlink loop."""
    nfc = unicodedata.normalize("NFC", "café")
    nfd = unicodedata.normalize("NFD", "naïve")
    files = {
        "space": write(root / "cats" / "my cat (1).jpg", jpeg(seed=1)),
        "unicode": write(root / "cats" / "猫 ü.PNG", png(seed=2)),
        "nfc": write(root / nfc / f"{nfc}.jpeg", jpeg(seed=3)),
        "nfd": write(root / nfd / f"{nfd}.jpg", jpeg(seed=4)),
        "nested": write(root / "cats" / "sub dir" / "deep.png", png(seed=5)),
    }
    write(root / "cats" / "notes.txt", b"not an image")
    write(root / "cats" / ".hidden.jpg", jpeg(seed=6))
    os.symlink("..", root / "cats" / "loop", target_is_directory=True)
    return files


# -- text ---------------------------------------------------------------------------

ODD_TEXTS = {
    "empty": "",
    "spaces": "   \t ",
    "nul": "before\x00after",
    "rtl": "\u200fשלום\u200e world",
    "zwj": "family: \U0001F468\u200d\U0001F469\u200d\U0001F467",
}


def non_utf8_lines() -> bytes:
    """Three lines; the second holds Latin-1 bytes that are not UTF-8."""
    return "first line\n".encode() + "caf\xe9 latin-1\n".encode("latin-1") + "third line\n".encode()


def bom_crlf_csv(rows: list[tuple[str, str]]) -> bytes:
    """A BOM-prefixed CSV with CRLF line ends and a ``text,label`` header."""
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    return b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8")


def big_text(n_bytes: int = 1 << 20) -> str:
    words = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur")
    out, size, i = [], 0, 0
    while size < n_bytes:
        word = words[i % len(words)]
        out.append(word)
        size += len(word) + 1
        i += 1
    return " ".join(out).ljust(n_bytes)[:n_bytes]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
