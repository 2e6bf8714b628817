"""What a backbone is: a frozen description that export, runtime and the store agree on.

A :class:`BackboneSpec` holds no heavy objects: building the PyTorch module is a
callable (``build_torch``) that the export step calls, once, when no cached ONNX
export exists. Everything that changes the output vectors is part of the spec and
therefore of the fingerprint (see :mod:`headstart.engine.backbones.fingerprint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Union

Modality = Literal["text", "image", "numeric"]
Pooling = Literal["mean", "cls", "none"]


@dataclass(frozen=True)
class TextPreprocessing:
    """Tokenisation of UTF-8 text for a BERT-style encoder.

    ``tokenizer`` is a folder or ``tokenizer.json`` path loadable by the ``tokenizers``
    library. Texts are truncated at ``max_length`` tokens (special tokens included)
    and padded per batch, never to a fixed length. ``inputs`` lists the ONNX input
    names the graph takes, in order.
    """

    tokenizer: str
    max_length: int = 256
    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
    kind: Literal["text"] = "text"


@dataclass(frozen=True)
class ImagePreprocessing:
    """Decoding and resizing of images into a float32 NCHW tensor.

    Rule: decode (first frame), apply EXIF orientation, convert to RGB (alpha is
    composited on ``background``; 16-bit is scaled, not clipped), resize the
    shorter side to ``resize`` with ``interpolation``, centre-crop ``size`` x ``size``,
    scale to [0, 1], then ``(x - mean) / std`` per channel.
    """

    size: int = 224
    resize: int = 256
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    background: tuple[int, int, int] = (255, 255, 255)
    max_pixels: int = 89_478_485  # Pillow's decompression-bomb limit
    min_side: int = 1
    input_name: str = "pixel_values"
    kind: Literal["image"] = "image"


@dataclass(frozen=True)
class NumericPreprocessing:
    """Numeric arrays fed as they are (e.g. a sequence model over transaction histories).

    ``shape`` is the shape of one item, ``None`` for a dynamic axis. ``dtype`` is the
    ONNX input's numpy dtype name. Items of different lengths along dynamic axes are
    padded with ``pad_value`` per batch; when ``mask_name`` is set the graph also gets an
    int64 mask of shape (batch, first dynamic axis) with 1 for real steps. ``vocabulary``: for event
    sequences, the ``vocabulary.json`` mapping the categorical columns to the ids the graph was trained on (the
    events reader uses it when no ``--vocabulary`` is given; its content is part of the fingerprint).
    """

    input_name: str = "input"
    shape: tuple[int | None, ...] = ()
    dtype: str = "float32"
    mask_name: str | None = None
    pad_value: float = 0.0
    vocabulary: str | None = None
    kind: Literal["numeric"] = "numeric"


Preprocessing = Union[TextPreprocessing, ImagePreprocessing, NumericPreprocessing]


@dataclass(frozen=True)
class Int8Recipe:
    """How the int8 export of a backbone is quantised (text: dynamic; images and arrays: static).

    ``ops``: the op types quantised (dynamic int8). ``fp32_nodes``: regular expressions; graph
    nodes whose name matches one stay fp32. ``fp32_convs``: the nodes up to the N-th convolution
    stay fp32 (static int8; in depthwise CNNs the first layers carry channels whose small ranges a
    shared int8 activation scale rounds to zero). ``fallback``: the recipe tried next when this one
    misses the parity gate (list the fast recipe first, the careful one after). The default
    quantises MatMuls only, per channel, and keeps nothing back.
    """

    ops: tuple[str, ...] = ("MatMul",)
    fp32_nodes: tuple[str, ...] = ()
    fp32_convs: int = 0
    fallback: "Int8Recipe | None" = None


@dataclass(frozen=True)
class BackboneSpec:
    """A frozen backbone: where its weights come from, how inputs are prepared, what comes out.

    Exactly one of ``build_torch`` (returns a ``torch.nn.Module`` whose forward takes the
    ONNX inputs, by keyword, and returns the final pooled, normalised embedding) or
    ``onnx_file`` (a ready ONNX graph whose output is already the embedding) is set. With ``build_torch``,
    ``export_onnx(path)`` may write the fp32 graph instead of tracing the module with ``torch.onnx`` (e.g.
    through optimum's exporter); the module stays the parity reference.

    ``weights`` lists the files whose bytes identify the pretrained weights (hashed into
    the fingerprint). ``probe`` returns raw probe items (texts, image bytes or arrays)
    for the parity check; when ``None`` the export step uses its default probe set for
    the modality. ``int8`` says how the int8 export is quantised (:class:`Int8Recipe`).
    """

    name: str
    modality: Modality
    source: str
    preprocessing: Preprocessing
    dim: int
    pooling: Pooling = "mean"
    normalize: bool = True
    description: str = ""
    weights: tuple[str, ...] = ()
    build_torch: Callable[[], Any] | None = field(default=None, compare=False, repr=False)
    onnx_file: str | None = None
    export_onnx: Callable[[Path], None] | None = field(default=None, compare=False, repr=False)
    output_name: str = "embedding"
    probe: Callable[[], list[Any]] | None = field(default=None, compare=False, repr=False)
    aliases: tuple[str, ...] = ()
    default: bool = False
    extra: tuple[tuple[str, str], ...] = ()  # anything else that changes the vectors, as (key, value)
    int8: Int8Recipe = Int8Recipe()

    def __post_init__(self) -> None:
        if (self.build_torch is None) == (self.onnx_file is None):
            raise ValueError(f"backbone '{self.name}': set exactly one of build_torch or onnx_file")
        if self.export_onnx is not None and self.build_torch is None:
            raise ValueError(f"backbone '{self.name}': export_onnx needs build_torch (the parity reference)")
        if self.preprocessing.kind != self.modality:
            raise ValueError(
                f"backbone '{self.name}': modality {self.modality!r} does not match preprocessing {self.preprocessing.kind!r}"
            )
        if self.dim <= 0:
            raise ValueError(f"backbone '{self.name}': dim must be positive, got {self.dim}")

    def identity(self) -> dict[str, Any]:
        """Everything about the spec that changes the vectors, as JSON-able data (no file hashes)."""
        from dataclasses import asdict

        return {
            "modality": self.modality,
            "preprocessing": asdict(self.preprocessing),
            "dim": self.dim,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "output_name": self.output_name,
            "extra": [list(kv) for kv in self.extra],
        }

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for ``headstart backbones --json``."""
        info = {"name": self.name, "source": self.source, "description": self.description,
                "aliases": list(self.aliases), "default": self.default, **self.identity()}
        if self.onnx_file:
            info["onnx_file"] = str(Path(self.onnx_file))
        return info
