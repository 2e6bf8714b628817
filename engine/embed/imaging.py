"""Decode image bytes into a normalised float32 tensor, with one documented rule for every odd file.

The rule (:func:`decode_image` does steps 1-7 in the decode workers, :func:`normalise_batch` step 8 per
batch; :func:`prepare_image` is both for one image):

1. **Format by content**, never by extension: JPEG, PNG, GIF, BMP, TIFF and WebP only (Pillow is
   restricted to these decoders, so e.g. EPS never reaches Ghostscript). HTML, PDF or anything
   else raises ``ItemError("not an image: ...")``.
2. **Size checks before decoding**: declared ``width * height > prep.max_pixels`` raises
   ``ItemError("image too large: ...")`` without decoding a pixel; a side shorter than
   ``prep.min_side`` raises ``ItemError("image too small: ...")``.
3. **First frame** of animated GIFs / multi-page TIFFs. Large JPEGs are decoded with Pillow's
   ``draft()`` (DCT scaling) to the smallest power-of-two reduction still at least ``prep.resize``
   on the shorter side.
4. **Truncated or corrupt data raises** ``ItemError("truncated or corrupt image: ...")``; nothing is
   padded (Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay ``False``).
5. **EXIF orientation** is applied once (the content key stays the raw file bytes).
6. **To 8-bit RGB**: 16-bit / 32-bit integer grayscale is scaled ``v * 255 / 65535`` (rounded;
   values outside 0..65535 clipped), never clipped at 255; float images are clipped to 0..255;
   CMYK, YCbCr, grayscale, bilevel and palette images use Pillow's conversion (no ICC colour
   management); anything with alpha (RGBA, LA, PA, palette or grayscale with a transparency
   entry) is composited over ``prep.background``. An unreadable EXIF block is ignored.
7. **Resize and crop**: the shorter side is resized to ``prep.resize`` (longer side
   ``int(resize * long / short)``), then a centre ``prep.size`` square is cropped, exactly as
   torchvision's ``Resize`` + ``CenterCrop``; both happen in one ``Image.resize(box=...)`` call, so
   a 3x100000 strip never allocates its full resized intermediate.
8. ``/ 255``, then ``(x - mean) / std`` per channel (a lookup table per channel); result ``(3, size, size)``
   float32.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, HeadstartError, ItemError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..backbones.spec import ImagePreprocessing

#: Pillow format names accepted, by the magic bytes that identify them.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")

_RESAMPLE = {"bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values, without importing PIL here


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name of ``data`` judged by its first bytes, or ``None`` if not an accepted image."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def describe_non_image(data: bytes) -> str:
    """A short guess at what non-image bytes are, for the error message."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not data:
        return "empty file"
    if head.startswith(b"%pdf"):
        return "PDF document"
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head:
        return "HTML document"
    if head.startswith((b"<?xml", b"<svg")):
        return "XML/SVG document (vector images are not supported)"
    if head.startswith(b"pk\x03\x04"):
        return "ZIP archive"
    return f"unrecognised content (first bytes {data[:8].hex()})"


def decode_image(data: bytes, prep: "ImagePreprocessing") -> "np.ndarray":
    """Raw image file bytes -> ``(prep.size, prep.size, 3)`` uint8 RGB: steps 1-7 of the module's rule.

    Raises :class:`ItemError` whose message starts with the reason (``not an image``,
    ``image too large``, ``image too small``, ``truncated or corrupt image``).
    """
    import numpy as np
    from PIL import Image, ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ConfigError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated images "
                          "would be silently padded with grey",
                          hint="find the library that sets it and keep it False while embedding")
    if prep.resize < prep.size:
        raise ConfigError(f"image preprocessing resize={prep.resize} is smaller than the crop size={prep.size}",
                          hint="set resize >= size")
    fmt = sniff_format(data)
    if fmt is None:
        raise ItemError(f"not an image: {describe_non_image(data)}",
                        hint="remove the file or give it real image content (JPEG, PNG, GIF, BMP, TIFF, WebP)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                rgb = _decode_rgb(im, prep)
    except HeadstartError:
        raise
    except Image.DecompressionBombError as exc:
        raise ItemError(f"image too large: {exc}", hint="resize the image or raise max_pixels") from None
    except MemoryError:
        raise ItemError("image too large: out of memory while decoding", hint="resize the image") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, EOFError, ...
        raise ItemError(f"truncated or corrupt image: {type(exc).__name__}: {exc}",
                        hint="re-export or remove the file") from None
    return np.asarray(_resize_crop(rgb, prep))


def normalise_batch(images: "list[np.ndarray]", prep: "ImagePreprocessing") -> "np.ndarray":
    """Step 8 for a batch of :func:`decode_image` outputs: ``(B, 3, size, size)`` float32.

    ``(v / 255 - mean) / std`` per channel through a 256-entry table per channel (bit-identical to
    computing it pixel by pixel in float32, and cheap enough to run in the main process, so the decode
    workers send 8-bit pixels: a quarter of the bytes).
    """
    import numpy as np

    table = _normalise_table(tuple(prep.mean), tuple(prep.std))
    out = np.empty((len(images), 3, prep.size, prep.size), dtype=np.float32)
    for i, pixels in enumerate(images):
        for c in range(3):
            np.take(table[c], pixels[:, :, c], out=out[i, c])
    return out


def prepare_image(data: bytes, prep: "ImagePreprocessing") -> "np.ndarray":
    """Raw image file bytes -> ``(3, prep.size, prep.size)`` float32: :func:`decode_image`, then
    :func:`normalise_batch` of one."""
    return normalise_batch([decode_image(data, prep)], prep)[0]


def _decode_rgb(im: Any, prep: "ImagePreprocessing") -> Any:
    """Checks, draft, decode the first frame, EXIF transpose, convert to 8-bit RGB."""
    from PIL import ImageOps

    w, h = im.size
    if w * h > prep.max_pixels:
        raise ItemError(f"image too large: {w}x{h} = {w * h} pixels > max_pixels {prep.max_pixels}",
                        hint="resize the image or raise max_pixels in the backbone's image preprocessing")
    if min(w, h) < max(prep.min_side, 1):
        raise ItemError(f"image too small: {w}x{h}, shorter side below min_side {max(prep.min_side, 1)}",
                        hint="remove the image or lower min_side")
    if im.format == "JPEG":
        scale = prep.resize / min(w, h)
        if scale <= 0.5:  # draft keeps at least the requested size on both sides
            im.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
    im.load()
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - an unreadable EXIF block leaves the pixels as stored
        pass
    return _to_rgb(im, prep.background)


def _to_rgb(im: Any, background: tuple[int, int, int]) -> Any:
    """8-bit RGB by the documented rule (16-bit scaled, alpha composited on ``background``)."""
    from PIL import Image

    mode = im.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        import numpy as np

        a = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        im = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif mode == "F":
        import numpy as np

        im = Image.fromarray(np.clip(np.rint(np.asarray(im, dtype=np.float32)), 0, 255).astype(np.uint8), "L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _resize_crop(im: Any, prep: "ImagePreprocessing") -> Any:
    """Shorter side to ``resize``, centre crop ``size``, in one resample of just the needed box."""
    w, h = im.size
    if w <= h:
        new_w, new_h = prep.resize, int(prep.resize * h / w)
    else:
        new_w, new_h = int(prep.resize * w / h), prep.resize
    left = int(round((new_w - prep.size) / 2.0))
    top = int(round((new_h - prep.size) / 2.0))
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + prep.size) * sx, (top + prep.size) * sy)
    return im.resize((prep.size, prep.size), _RESAMPLE[prep.interpolation], box=box)


@functools.lru_cache(maxsize=8)
def _normalise_table(mean: tuple[float, ...], std: tuple[float, ...]) -> "np.ndarray":
    """The float32 result of the normalisation for every 8-bit value, computed with the same float32
    operations as normalising the pixels one by one would use (so the values are bit-identical)."""
    import numpy as np

    values = np.arange(256, dtype=np.float32)[:, None] * np.float32(1.0 / 255.0)
    table = (values - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(table.T)
