"""prepare_image against every image row of faults.md, with real files made by tests/fixtures_faults.py."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fixtures_faults as F
from headstart.engine.backbones.spec import ImagePreprocessing
from headstart.engine.embed.imaging import decode_image, normalise_batch, prepare_image, sniff_format
from headstart.engine.errors import ConfigError, ItemError

RAW = ImagePreprocessing(size=32, resize=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # output = pixels / 255


def pixels(data: bytes, prep: ImagePreprocessing = RAW) -> np.ndarray:
    """(H, W, 3) 0..255 view of prepare_image's output with identity normalisation."""
    out = prepare_image(data, prep)
    assert out.dtype == np.float32 and out.shape == (3, prep.size, prep.size)
    assert np.isfinite(out).all()
    return out.transpose(1, 2, 0) * 255


def test_default_normalisation_and_shape():
    prep = ImagePreprocessing()
    out = prepare_image(F.jpeg(640, 480), prep)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32 and out.flags.c_contiguous
    raw = pixels(F.jpeg(640, 480), ImagePreprocessing(mean=(0, 0, 0), std=(1, 1, 1))) / 255
    expect = (raw - np.array(prep.mean)) / np.array(prep.std)
    np.testing.assert_allclose(out.transpose(1, 2, 0), expect, atol=1e-5)


def test_workers_send_8_bit_pixels_and_the_batch_normalisation_is_bit_identical():
    """decode_image gives uint8 (what the decode workers send); the table lookup equals float32 arithmetic."""
    prep = ImagePreprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    decoded = [decode_image(F.jpeg(300 + 40 * i, 200, seed=i), prep) for i in range(3)]
    assert all(d.dtype == np.uint8 and d.shape == (224, 224, 3) for d in decoded)
    batch = normalise_batch(decoded, prep)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32
    for d, out in zip(decoded, batch):
        direct = (d.astype(np.float32) * np.float32(1 / 255) - np.float32(prep.mean)) / np.float32(prep.std)
        assert np.array_equal(out, direct.transpose(2, 0, 1))


def test_matches_full_resize_then_centre_crop():
    """The single box-resize equals torchvision's Resize(shorter side) + CenterCrop on a full resize."""
    data = F.png(300, 200, seed=3)
    prep = ImagePreprocessing(size=96, resize=110, mean=(0, 0, 0), std=(1, 1, 1))
    im = Image.open(__import__("io").BytesIO(data)).convert("RGB")
    full = im.resize((int(110 * 300 / 200), 110), Image.Resampling.BILINEAR)
    left, top = int(round((full.width - 96) / 2)), int(round((full.height - 96) / 2))
    expect = np.asarray(full.crop((left, top, left + 96, top + 96)), dtype=np.float32)
    diff = np.abs(pixels(data, prep) - expect)
    assert diff.max() <= 1.01 and diff.mean() < 0.1  # at most one rounding step per pixel


@pytest.mark.parametrize("name, data, reason", [
    ("corrupt jpeg body", F.corrupt_jpeg(), "truncated or corrupt image"),
    ("jpeg cut at 60%", F.truncated(F.jpeg(200, 150)), "truncated or corrupt image"),
    ("png cut at 60%", F.truncated(F.png(200, 150)), "truncated or corrupt image"),
    ("html as jpg", F.HTML_BYTES, "not an image: HTML document"),
    ("pdf as jpg", F.PDF_BYTES, "not an image: PDF document"),
    ("empty file", b"", "not an image: empty file"),
    ("declared 100000x100000", F.bomb_png(), "image too large"),
    ("declared 12000x10000", F.bomb_png(12_000, 10_000), "image too large: 12000x10000"),
])
def test_bad_images_raise_item_error_with_reason(name, data, reason):
    with pytest.raises(ItemError) as err:
        prepare_image(data, RAW)
    assert err.value.message.startswith(reason), name
    assert err.value.hint


def test_truncated_never_padded_even_when_most_data_is_there():
    data = F.jpeg(400, 300)
    for fraction in (0.6, 0.9, 0.99):
        with pytest.raises(ItemError, match="truncated"):
            prepare_image(F.truncated(data, fraction), RAW)


def test_load_truncated_images_flag_is_refused(monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ConfigError, match="LOAD_TRUNCATED_IMAGES"):
        prepare_image(F.jpeg(), RAW)


def test_min_side_gives_too_small():
    prep = ImagePreprocessing(size=32, resize=32, min_side=8)
    with pytest.raises(ItemError, match="image too small: 1x1"):
        prepare_image(F.tiny_png(), prep)


def test_one_pixel_and_extreme_strip_give_vectors():
    assert np.allclose(pixels(F.tiny_png()), (200, 30, 30), atol=0.6)
    strip = pixels(F.strip_png(3, 100_000), ImagePreprocessing())
    assert strip.shape == (224, 224, 3)


PEAK_GROWTH = """
import sys
sys.path.insert(0, "tests")
import numpy as np
import fixtures_faults as F
from headstart.engine.backbones.spec import ImagePreprocessing
from headstart.engine.embed.imaging import prepare_image
from headstart.engine.errors import ItemError
def peak_kib():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
setup = {setup!r}
exec(setup)
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset this process's peak RSS to its current RSS
before = peak_kib()
try:
    {work}
except ItemError as exc:
    print("item error:", exc.message, file=sys.stderr)
print(peak_kib() - before)
"""


def peak_growth_mib(work: str, setup: str = "") -> tuple[float, str]:
    """Growth of the peak RSS while ``work`` runs, in a fresh process doing only that (after ``setup``).

    Linux's VmHWM, reset just before the step (``clear_refs``): ``ru_maxrss`` cannot be used, as a child
    inherits its parent's high-water mark through fork + exec (a big pytest process hides any growth).
    """
    proc = subprocess.run([sys.executable, "-c", PEAK_GROWTH.format(setup=setup, work=work)], capture_output=True,
                          text=True, check=True)
    return int(proc.stdout) / 1024, proc.stderr


def test_peak_memory_measurement_sees_an_allocation():
    """The measurement below can fail: touching 200 MB in the measured step shows up, even when the
    parent (this pytest process) had a larger peak than that."""
    ballast = np.ones(400 << 20, np.uint8)  # raises this process's high-water mark above the child's work
    ballast.sum()
    del ballast
    grown, _ = peak_growth_mib("np.ones(200 << 20, np.uint8).sum()")
    assert grown > 150


def test_extreme_strip_memory_stays_small():
    """3x100000 resized 'shorter side to 256' would be 256x8.5M (6.5 GB); the box resize never builds it."""
    grown, _ = peak_growth_mib("prepare_image(data, ImagePreprocessing())", setup="data = F.strip_png(3, 100_000)")
    assert grown < 100


def test_bomb_is_refused_without_decoding():
    """A header declaring 12000x10000 (between our limit and Pillow's) must not allocate 360 MB."""
    grown, err = peak_growth_mib("prepare_image(data, ImagePreprocessing(max_pixels=100_000_000 - 1))",
                                 setup="data = F.bomb_png(12_000, 10_000)")
    assert "item error: image too large" in err
    assert grown < 100


@pytest.mark.parametrize("data, kind", [(F.cmyk_jpeg(), "colour"), (F.png16_rgb(), "colour"),
                                        (F.grayscale_png(), "gray")], ids=["cmyk", "png16-rgb", "gray"])
def test_colour_conversions_track_the_rgb_original(data, kind):
    reference = pixels(F.png())
    out = pixels(data)
    if kind == "gray":
        assert np.allclose(out[..., 0], out[..., 1]) and np.allclose(out[..., 0], out[..., 2])
        gray = reference @ np.array([0.299, 0.587, 0.114])
        assert np.abs(out[..., 0] - gray).mean() < 3
    else:  # a colour image must stay colour (a 16-bit RGB read as gray would fail here)
        assert np.abs(out[..., 0] - out[..., 2]).mean() > 20
        assert np.abs(out - reference).mean() < 6


def test_16_bit_is_scaled_not_clipped():
    out = pixels(F.png16_gray(64, 64))  # square: the crop keeps the whole ramp
    row = out[16, :, 0]
    assert row[0] < 10 and row[-1] > 245  # a full 0..65535 ramp stays a 0..255 ramp
    assert np.all(np.diff(row) >= -1)
    assert np.allclose(out[..., 0], out[..., 2])


def test_alpha_is_composited_on_background():
    white = pixels(F.rgba_png(alpha=0))
    assert np.allclose(white, 255)
    grey_bg = ImagePreprocessing(size=32, resize=32, mean=(0, 0, 0), std=(1, 1, 1), background=(10, 20, 30))
    assert np.allclose(pixels(F.rgba_png(alpha=0), grey_bg), (10, 20, 30), atol=0.6)
    opaque = pixels(F.rgba_png(alpha=255))
    assert np.abs(opaque - pixels(F.png())).max() <= 1


def test_palette_transparency_is_composited():
    out = pixels(F.palette_transparent_png(64, 48), ImagePreprocessing(size=32, resize=32, mean=(0, 0, 0),
                                                                         std=(1, 1, 1), background=(0, 255, 0)))
    assert np.allclose(out[:, :12], (0, 255, 0), atol=1)  # transparent left half shows the background
    assert not np.allclose(out[:, 20:], (0, 255, 0), atol=30)


@pytest.mark.parametrize("orientation, red_side", [(1, "left"), (6, "top"), (8, "bottom")])
def test_exif_orientation_applied_once(orientation, red_side):
    out = pixels(F.exif_jpeg(orientation), ImagePreprocessing(size=40, resize=40, mean=(0, 0, 0), std=(1, 1, 1)))
    red = out[..., 0] > 128
    halves = {"left": red[:, :15], "top": red[:15, :], "bottom": red[-15:, :]}
    assert halves[red_side].mean() > 0.95
    assert red.mean() == pytest.approx(0.5, abs=0.05)


def test_first_frame_of_animated_gif_and_multipage_tiff():
    assert np.allclose(pixels(F.animated_gif()), (255, 0, 0), atol=1)
    assert np.allclose(pixels(F.multipage_tiff()), (0, 255, 0), atol=1)


def test_format_detected_by_content_not_name():
    assert sniff_format(F.png()) == "PNG" and sniff_format(F.jpeg()) == "JPEG"
    assert sniff_format(F.HTML_BYTES) is None and sniff_format(b"GIF89a") == "GIF"


def test_draft_mode_close_to_full_decode_for_large_jpeg():
    data = F.jpeg(2000, 1500, quality=95)
    prep = ImagePreprocessing(mean=(0, 0, 0), std=(1, 1, 1))
    drafted = pixels(data, prep)
    full = np.asarray(Image.open(__import__("io").BytesIO(data)).convert("RGB").resize(
        (341, 256), Image.Resampling.BILINEAR).crop((58, 16, 282, 240)), dtype=np.float32)
    # The same picture (DCT-scaled decode differs only by small filtering differences).
    assert np.abs(drafted - full).mean() < 2


def test_folder_of_fault_images_gives_a_vector_or_an_item_error_each(tmp_path):
    from headstart.engine.embed.sources import open_source

    faults = {"corrupt.jpg": F.corrupt_jpeg(), "cut.jpg": F.truncated(F.jpeg(200, 150)), "cmyk.jpg": F.cmyk_jpeg(),
              "p16.png": F.png16_gray(), "pal.png": F.palette_transparent_png(), "rgba.png": F.rgba_png(),
              "exif6.jpg": F.exif_jpeg(6), "bomb.png": F.bomb_png(), "dot.png": F.tiny_png(),
              "strip.png": F.strip_png(), "anim.gif": F.animated_gif(), "pages.tif": F.multipage_tiff(),
              "page.jpg": F.HTML_BYTES, "doc.jpg": F.PDF_BYTES}
    for name, data in faults.items():
        F.write(tmp_path / name, data)
    outcome = {}
    for item in open_source(tmp_path):
        try:
            outcome[item.ref.rsplit("/", 1)[1]] = prepare_image(item.payload, ImagePreprocessing()).shape
        except ItemError as exc:
            outcome[item.ref.rsplit("/", 1)[1]] = exc.message.split(":")[0]
    assert outcome.pop("corrupt.jpg") == outcome.pop("cut.jpg") == "truncated or corrupt image"
    assert outcome.pop("bomb.png") == "image too large"
    assert outcome.pop("page.jpg") == outcome.pop("doc.jpg") == "not an image"
    assert set(outcome.values()) == {(3, 224, 224)} and len(outcome) == 9
