"""What the bundle is fed for a raw item, and a runner over an in-memory bundle (used by the gate)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

#: Texts per bundle call in the gate (padding inside a batch is part of what is checked).
TEXT_BATCH = 16


def decoded_pixels(data: bytes, prep: Any) -> np.ndarray:
    """Image file bytes -> uint8 RGB [H, W, 3] as headstart decodes them (format check, draft for large
    JPEGs, EXIF orientation, alpha on the background), before any resize: the bundle's ``image`` input."""
    import io
    import warnings

    from PIL import Image

    from ..embed.imaging import _decode_rgb, sniff_format
    from ..errors import ItemError

    fmt = sniff_format(data)
    if fmt is None:
        raise ItemError("not an image", hint="give image bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            return np.asarray(_decode_rgb(im, prep), dtype=np.uint8)


def feed_of(spec: Any, payload: Any) -> Any:
    if spec.modality == "text":
        return payload
    if spec.modality == "image":
        return decoded_pixels(payload, spec.preprocessing)
    from ..backbones.preprocess import make_preprocessor

    pre = make_preprocessor(spec)
    return pre.collate(pre.prepare_many([payload]))


def bundle_runner(data: bytes, spec: Any, cuda: bool = False, text_feed: Callable[[list[str]], dict] | None = None,
                  disabled_optimizers: tuple[str, ...] | None = None
                  ) -> Callable[[list[Any]], tuple[list[str], np.ndarray]]:
    """``run(feeds) -> (labels, probabilities)`` over the serialized bundle ``data`` (``cuda``: on the CUDA
    provider, as fp16 bundles run; ``text_feed``: strings -> the bundle's inputs, for a text bundle whose
    tokenizer ships beside it; ``disabled_optimizers``: see :func:`.loader.open_session`)."""
    from .loader import image_feeds, open_session

    session = open_session(data, needs_extensions=spec.modality == "text" and not text_feed,
                           providers=(["CUDAExecutionProvider"] if cuda else []) + ["CPUExecutionProvider"],
                           disabled_optimizers=disabled_optimizers)
    outputs = ["probabilities", "label"]

    def run(feeds: list[Any]) -> tuple[list[str], np.ndarray]:
        if spec.modality == "image":  # same-size images in one call: the batch input is checked as well
            calls = image_feeds(feeds)
        elif spec.modality == "text":
            make = text_feed or (lambda texts: {"text": np.array(texts, dtype=object)})
            calls = [(list(range(i, min(i + TEXT_BATCH, len(feeds)))), make(feeds[i:i + TEXT_BATCH]))
                     for i in range(0, len(feeds), TEXT_BATCH)]
        else:
            calls = [([i], f) for i, f in enumerate(feeds)]
        labels: list[str] = [""] * len(feeds)
        probas: list[Any] = [None] * len(feeds)
        for rows, call in calls:
            proba, label = session.run(outputs, call)
            for j, row in enumerate(rows):
                probas[row], labels[row] = proba[j], str(label[j])
        return labels, np.stack(probas) if probas else np.zeros((0, 0), np.float32)

    return run
