"""Fixed probe sets for the parity check: at least 16 items per modality, edge items included."""

from __future__ import annotations

from typing import Any

TEXTS = [
    "",
    "   ",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password if I no longer have access to my email?",
    "Transfer of 1,250.00 EUR to account DE89 3704 0044 0532 0130 00 flagged for review.",
    "Le chat est assis sur le tapis, et il regarde la pluie tomber.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "Emoji: 👩‍👩‍👧 family, 👍🏽 thumbs, 🏳️‍🌈 flag.",
    "RTL mark \u200f and Arabic: مرحبا بالعالم",
    "line one\r\nline two\r\n\ttabbed",
    "NUL\x00inside",
    "ALL CAPS SHOUTING ABOUT A REFUND THAT NEVER ARRIVED!!!",
    "def f(x):\n    return x ** 2  # code is text too",
    "word " * 40,
    "A medium sentence that repeats itself. " * 12,
    "token " * 600,  # cut at max_length
]


def default_probe(modality: str) -> list[Any]:
    """The default probe items for ``modality`` (texts, PNG/JPEG bytes, or arrays need a shape)."""
    if modality == "text":
        return list(TEXTS)
    if modality == "image":
        return probe_images()
    raise ValueError(f"no default probe for modality {modality!r}")


def probe_images() -> list[bytes]:
    """18 synthetic images: gradients, noise, shapes, a 1x1, a 2x2, a very wide and a very tall strip."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(1234)
    images = []
    for size in [(224, 224), (320, 240), (240, 320), (64, 64), (500, 375), (256, 256)]:
        w, h = size
        gx = np.linspace(0, 255, w)[None, :, None]
        gy = np.linspace(0, 255, h)[:, None, None]
        images.append(np.concatenate([gx + 0 * gy, gy + 0 * gx, (gx + gy) / 2], axis=2))
    for size in [(224, 224), (300, 200), (200, 300), (128, 96)]:
        images.append(rng.uniform(0, 255, size=(size[1], size[0], 3)))
    images.append(np.zeros((224, 224, 3)))
    images.append(np.full((224, 224, 3), 255.0))
    images.append(rng.uniform(0, 255, size=(1, 1, 3)))
    images.append(rng.uniform(0, 255, size=(2, 2, 3)))
    images.append(rng.uniform(0, 255, size=(3, 2000, 3)))  # very wide
    images.append(rng.uniform(0, 255, size=(1500, 4, 3)))  # very tall
    out = []
    for i, arr in enumerate(images):
        im = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")
        buf = io.BytesIO()
        im.save(buf, format="JPEG" if i % 3 == 0 and min(im.size) > 8 else "PNG")
        out.append(buf.getvalue())
    for shape in ("ellipse", "rectangle"):
        im = Image.new("RGB", (256, 192), (30, 90, 160))
        getattr(ImageDraw.Draw(im), shape)((40, 30, 200, 160), fill=(240, 200, 40))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def probe_arrays(shape: tuple[int | None, ...], dtype: str, count: int = 16) -> list[Any]:
    """Random arrays of the declared item shape; dynamic axes take lengths 1 to 64."""
    import numpy as np

    rng = np.random.default_rng(1234)
    lengths = [1, 2, 3, 5, 8, 13, 21, 34, 64, 7, 16, 32, 4, 9, 50, 1][:count]
    out = []
    for n in lengths:
        item_shape = tuple(n if s is None else s for s in shape)
        if np.dtype(dtype).kind == "f":
            out.append(rng.standard_normal(item_shape).astype(dtype))
        else:
            out.append(rng.integers(0, 100, size=item_shape).astype(dtype))
    return out
