"""Bundles, fast path: the in-graph image resize (channel planes, whole-row gathers) against headstart's own
preprocessing, the batch of same-size images, and the loader's grouping of images by size.

Real EfficientNet-Lite0 preprocessing settings, real Pillow-encoded images, real onnxruntime sessions.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

# a hang guard only: the module fixture trains a head on EfficientNet-Lite0 features and builds a bundle
pytestmark = pytest.mark.timeout(1200)


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def prep():
    from headstart.plugins.backbones.efficientnet import efficientnet_spec

    return efficientnet_spec().preprocessing


@pytest.fixture(scope="module")
def resize_session(prep):
    import onnxruntime as ort

    from headstart.engine.bundle.image_graph import image_graph

    return ort.InferenceSession(image_graph(prep).SerializeToString(), providers=["CPUExecutionProvider"])


SIZES = [(240, 320), (300, 300), (224, 224), (256, 256), (1, 1), (2, 5), (3, 2000), (2000, 3), (257, 1999),
         (480, 640), (300, 200), (1000, 333), (225, 224), (224, 225), (255, 257)]


@pytest.mark.parametrize("seed", [0, 1])
def test_in_graph_resize_equals_headstarts_preprocessing(prep, resize_session, seed: int) -> None:
    """Bit-identical to headstart's Pillow preprocessing on landscape and square images of many sizes (tiny,
    strips, up- and downscaled, the tap span at the image edge), within one 8-bit level on portrait ones."""
    from headstart.engine.bundle.feeds import decoded_pixels
    from headstart.engine.embed.imaging import prepare_image

    rng = np.random.default_rng(seed)
    sizes = SIZES + [tuple(int(v) for v in rng.integers(1, 900, size=2)) for _ in range(20)]
    for h, w in sizes:
        data = _png(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        got = resize_session.run(None, {"image": decoded_pixels(data, prep)})[0]
        assert got.shape == (1, 3, prep.size, prep.size)
        diff = float(np.abs(got[0] - prepare_image(data, prep)).max())
        assert diff == 0.0 if w >= h else diff <= 1 / 128 + 1e-6, (h, w, diff)


def test_same_size_batch_equals_one_call_per_image(prep, resize_session) -> None:
    """n same-size images stacked on the channel axis ([H, W, 3 n]) give, row for row, exactly what one call
    per image gives."""
    rng = np.random.default_rng(7)
    for h, w in [(300, 400), (500, 280), (224, 224)]:
        batch = rng.integers(0, 256, size=(5, h, w, 3), dtype=np.uint8)
        together = resize_session.run(None, {"image": np.concatenate(list(batch), axis=2)})[0]
        assert together.shape == (5, 3, prep.size, prep.size)
        for i in range(5):
            assert np.array_equal(together[i], resize_session.run(None, {"image": batch[i]})[0][0]), (h, w, i)


def test_non_bilinear_preprocessing_is_refused_before_any_work(prep) -> None:
    import dataclasses

    from headstart.engine.bundle.image_graph import image_graph
    from headstart.engine.errors import BundleError

    with pytest.raises(BundleError, match="bicubic") as caught:
        image_graph(dataclasses.replace(prep, interpolation="bicubic"))
    assert caught.value.hint


@pytest.fixture(scope="module")
def photo_bundle(tmp_path_factory, session_home) -> dict[str, Path]:
    from test_bundle import photo_folder

    from headstart.engine.bundle.build import build_bundle
    from headstart.engine.train.api import train

    root = tmp_path_factory.mktemp("fast-photos")
    train_dir = photo_folder(root / "train", 10, 0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSTART_HOME", str(session_home))
        train(str(train_dir), "linear", backbone="efficientnet-lite0", out=root / "model", progress=False)
        build_bundle(root / "model", root / "photos.onnx")
    return {"bundle": root / "photos.onnx", "train": train_dir}


def test_loader_batches_same_size_images_and_keeps_the_order(photo_bundle) -> None:
    """``Bundle.predict(batch=True)`` on a mix of sizes (groups of the same size go as one call, stacked on the
    channel axis) returns the labels and probabilities of one call per image, in the order given."""
    from PIL import Image

    from headstart.engine.bundle.loader import image_feeds, load_bundle

    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(photo_bundle["train"].rglob("*.jpg"))]
    same = [np.asarray(Image.fromarray(im).resize((320, 240))) for im in photos[:6]]
    mixed = [same[0], photos[7], same[1], same[2], photos[8], same[3], same[4], same[5]]
    calls = image_feeds(mixed, size=4)
    assert sorted(r for rows, _ in calls for r in rows) == list(range(len(mixed)))
    assert any(feed["image"].shape[2] > 3 for _, feed in calls)  # the batch path is what is compared below
    bundle = load_bundle(photo_bundle["bundle"])
    labels, proba = bundle.predict(mixed, batch=True)
    for i, im in enumerate(mixed):
        one_labels, one_proba = bundle.predict(im)
        assert one_labels == [labels[i]]
        np.testing.assert_allclose(one_proba[0], proba[i], rtol=0, atol=1e-6)
    assert "[H, W, 3 n]" in bundle.metadata["inputs"]


def test_fp16_bundle_is_gated_on_the_cpu_provider_and_says_so(tmp_path: Path, session_home: Path) -> None:
    """Without CUDA an fp16 bundle is still checked (validation split, CPU provider) and written; the report,
    the CLI and the metadata say where it was checked; the file predicts the model's labels on onnxruntime's CPU."""
    import csv
    import os
    import subprocess
    import sys

    import onnxruntime as ort

    from headstart.engine.bundle.loader import load_bundle
    from headstart.engine.train.api import predict, train

    if "CUDAExecutionProvider" in ort.get_available_providers():
        from headstart.engine.backbones.runtime import _cuda_driver_loadable

        assert not _cuda_driver_loadable(), "this test checks the CPU gate: run it where CUDA cannot load"
    root = Path(__file__).resolve().parents[1] / "examples" / "support-tickets"
    train(str(root / "train.csv"), "linear", backbone="minilm-l6", out=tmp_path / "model", progress=False)
    done = subprocess.run([sys.executable, "-m", "headstart", "bundle", str(tmp_path / "model"), "-o",
                           str(tmp_path / "m16.onnx"), "--precision", "fp16"], capture_output=True, text=True,
                          env=dict(os.environ, HEADSTART_HOME=str(session_home)), timeout=900)
    assert done.returncode == 0, done.stderr
    assert "checked on the CPU provider" in done.stdout and "validation split" in done.stdout
    bundle = load_bundle(tmp_path / "m16.onnx")
    assert bundle.metadata["backbone"]["precision"] == "fp16"
    assert bundle.metadata["parity"]["provider"] == "CPUExecutionProvider"
    assert bundle.metadata["parity"]["validation"]["accuracy_delta_pt"] >= -0.5
    with open(root / "test.csv", newline="", encoding="utf-8") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    labels, _ = bundle.predict(texts)
    expected = [str(v) for v in predict(tmp_path / "model", str(root / "test.csv")).labels]
    assert np.mean([a == b for a, b in zip(labels, expected)]) >= 0.97


def _tiny_roberta(folder: Path, words: list[str]) -> Path:
    """A 2-layer random RoBERTa with a word-level tokenizer (not WordPiece: no in-graph op reproduces it)."""
    import torch
    from transformers import RobertaConfig, RobertaModel

    from tiny_tokenizer import save_word_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = save_word_tokenizer(folder, words)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=66, pad_token_id=0)).save_pretrained(folder)
    return folder


def test_tokenizer_the_graph_cannot_hold_ships_beside_the_bundle(tmp_path: Path, session_home: Path) -> None:
    """A non-WordPiece tokenizer: the bundle takes input_ids/attention_mask, its tokenizer.json is written
    beside it, the CLI and the metadata say so, and load_bundle (which uses the file) predicts what
    `headstart predict` predicts; without the file it says what is missing."""
    import csv
    import os
    import subprocess
    import sys

    import onnxruntime as ort
    from finetune_data import FILLERS, KEYWORDS, easy_task

    from headstart.engine.bundle.loader import load_bundle
    from headstart.engine.train.api import predict, train

    roberta = _tiny_roberta(tmp_path / "roberta", [*FILLERS, *KEYWORDS])
    data = easy_task(tmp_path / "train.csv", 48, 0)
    train(str(data), "linear", backbone=f"hf:{roberta}", out=tmp_path / "model", progress=False)
    out = tmp_path / "deploy" / "tickets.onnx"
    out.parent.mkdir()
    done = subprocess.run([sys.executable, "-m", "headstart", "bundle", str(tmp_path / "model"), "-o", str(out)],
                          capture_output=True, text=True, env=dict(os.environ, HEADSTART_HOME=str(session_home)),
                          timeout=900)
    assert done.returncode == 0, done.stderr
    shipped = tmp_path / "deploy" / "tickets.tokenizer.json"
    assert "cannot be expressed as graph ops" in done.stdout and str(shipped) in done.stdout
    assert shipped.is_file() and sorted(p.name for p in out.parent.iterdir()) == [out.name, shipped.name]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])  # no extensions needed
    assert sorted(i.name for i in session.get_inputs()) == ["attention_mask", "input_ids"]
    bundle = load_bundle(out)
    meta = bundle.metadata["tokenizer"]
    assert meta["in_graph"] is False and meta["file"] == shipped.name and meta["inputs"] == ["input_ids", "attention_mask"]
    assert shipped.name in bundle.metadata["inputs"] and bundle.metadata["parity"]["training"]["max_abs_diff"] <= 1e-4
    with open(easy_task(tmp_path / "new.csv", 20, 5), newline="", encoding="utf-8") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)] + ["", "FRAUD unknownword payment " * 40]
    with open(tmp_path / "new2.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["text"], *([t] for t in texts)])
    labels, proba = bundle.predict(texts)
    expected = predict(tmp_path / "model", str(tmp_path / "new2.csv"))
    assert len(expected.labels) == len(texts)
    assert labels == [str(v) for v in expected.labels] and np.abs(proba - expected.proba).max() <= 1e-4
    shipped.unlink()
    with pytest.raises(FileNotFoundError, match="keep it beside"):
        load_bundle(out)
