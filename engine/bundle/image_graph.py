"""Resize, crop and normalise as graph ops: ``image`` (uint8 [H, W, 3], one decoded RGB image of any size, or
[H, W, 3 n]: n same-size images stacked on the channel axis, ``np.concatenate(images, axis=2)``) -> the
backbone's pixel input (float32 [n, 3, size, size]), reproducing headstart's preprocessing (:func:`headstart.engine.embed.imaging._resize_crop`
+ :func:`~headstart.engine.embed.imaging.normalise_batch`).

Pillow's bilinear ``resize(box=...)`` is rebuilt exactly, not approximated by ONNX ``Resize``: the same box
(as C floats, like Pillow's; shorter side to ``resize``, centre crop ``size``, offsets rounded half to even as
Python's ``round``), the same filter taps (triangle of support ``max(scale, 1)``, weights normalised per output
pixel, then to integers of 22 fractional bits, Pillow's ``PRECISION_BITS``), a horizontal pass rounded to 8
bits, then a vertical one - with every product and sum exact, as Pillow's int32 kernels (see :func:`_pass`).
That is bit-exact where Pillow resamples rows first (landscape and square images, many portrait ones,
measured with Pillow 13); for portrait images Pillow 13 resamples columns first, and pixels then differ by at
most one 8-bit level (the gate's image tolerance, :data:`headstart.engine.bundle.gate.IMAGE_MAX_ABS_DIFF`).
Normalisation is ``(v * (1/255) - mean) / std`` in float32, the operations headstart's lookup table is made
with (bit-identical). Decoding (format, EXIF orientation, alpha, JPEG draft) stays outside the graph: feed
the pixels of the decoded file.

Speed: each pass gathers whole rows of channel planes (columns first for the horizontal pass) and sums the
taps with one Mul + ReduceSum; only the rows and columns a tap reads are sliced out, and the tap count is the
widest span's (not Pillow's ``2 ceil(support) + 1`` upper bound). A 300 x 400 photo takes about 1 ms on one
core, against 10+ ms for a per-pixel gather on the [H, W, 3] layout. Memory: the horizontal pass holds
``3 x size x taps x H'`` float64 values (H' = rows read, taps ~ 2 W / resized width + 1), e.g. ~340 MB for an
undrafted 4000 x 3000 PNG, ~10 MB for a drafted JPEG.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import BundleError
from .graph_parts import GraphParts

PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2


def _coefficients(g: GraphParts, in_size: str, in0: str, in1: str, out: int) -> "Taps":
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for a bilinear filter, as graph ops."""
    import numpy as np
    from onnx import TensorProto

    f64 = np.float64
    # Pillow takes the box as C floats: in1 - in0 is a float32 difference, then widened to double
    in0f, in1f = (g.node("Cast", [v], to=TensorProto.FLOAT) for v in (in0, in1))
    in0 = g.node("Cast", [in0f], to=TensorProto.DOUBLE)
    width = g.node("Cast", [g.node("Sub", [in1f, in0f])], to=TensorProto.DOUBLE)
    scale = g.node("Div", [width, g.const(float(out), f64)], "scale")
    filterscale = g.node("Max", [scale, g.const(1.0, f64)], "filterscale")
    support = filterscale  # bilinear support 1.0 x filterscale
    ss = g.node("Div", [g.const(1.0, f64), filterscale], "ss")
    positions = g.node("Range", [g.const(0.0, f64), g.const(float(out), f64), g.const(1.0, f64)], "xx")
    center = g.node("Add", [in0, g.node("Mul", [g.node("Add", [positions, g.const(0.5, f64)]), scale])], "center")
    xmin = g.node("Max", [g.node("Floor", [g.node("Add", [g.node("Sub", [center, support]), g.const(0.5, f64)])]),
                          g.const(0.0, f64)], "xmin")
    xend = g.node("Min", [g.node("Floor", [g.node("Add", [g.node("Add", [center, support]), g.const(0.5, f64)])]),
                          in_size], "xend")
    # Pillow reserves 2 ceil(support) + 1 taps per pixel; only the widest span's count can have weight
    taps = g.node("ReduceMax", [g.node("Sub", [xend, xmin])], "taps", keepdims=0)
    k = g.node("Range", [g.const(0.0, f64), taps, g.const(1.0, f64)], "k")
    j = g.node("Add", [g.node("Unsqueeze", [xmin, g.const([1], np.int64)]),
                       g.node("Unsqueeze", [k, g.const([0], np.int64)])], "j")
    inside = g.node("Less", [j, g.node("Unsqueeze", [xend, g.const([1], np.int64)])])
    t = g.node("Mul", [g.node("Add", [g.node("Sub", [j, g.node("Unsqueeze", [center, g.const([1], np.int64)])]),
                                      g.const(0.5, f64)]), ss])
    tri = g.node("Max", [g.node("Sub", [g.const(1.0, f64), g.node("Abs", [t])]), g.const(0.0, f64)])
    w = g.node("Where", [inside, tri, g.const(0.0, f64)], "w")
    total = g.node("ReduceSum", [w, g.const([1], np.int64)], keepdims=1)
    normed = g.node("Div", [w, total])
    kint = g.node("Floor", [g.node("Add", [g.node("Mul", [normed, g.const(float(1 << PRECISION_BITS), f64)]),
                                           g.const(0.5, f64)])])
    scaled = g.node("Mul", [kint, g.const(1.0 / (1 << PRECISION_BITS), f64)])  # exact: a power of two
    # taps outside the filter's span have weight 0; they point at its first pixel so the span stays tight
    index = g.node("Cast", [g.node("Where", [inside, j, g.node("Unsqueeze", [xmin, g.const([1], np.int64)])])],
                   to=TensorProto.INT64)
    first = g.node("ReduceMin", [index], keepdims=0)
    end = g.node("Add", [g.node("ReduceMax", [index], keepdims=0), g.const(1, np.int64)])
    local = g.node("Sub", [index, first])
    return Taps(local, scaled, first, end)


class Taps(NamedTuple):
    """One axis' resampling: ``index`` int64 [out, K] into the span ``first:end`` of the input axis (0-d int64
    tensors) and Pillow's integer weights (22 fractional bits) times 2^-22, float64 [out, K]."""
    index: str
    weights: str
    first: str
    end: str


def _pass(g: GraphParts, planes: str, taps: Taps) -> str:
    """One 8-bit resampling pass along axis 1 of uint8 [3 n, span, other] ``planes``: gather the taps (whole
    rows of ``other`` values at a time), weight, sum, round -> uint8 [3 n, out, other].

    Pillow sums ``pixel * weight`` in int32 and keeps ``(sum + 2^21) >> 22`` clipped to 0..255. Here the
    weights are pre-scaled by 2^-22 (exact: a power of two) and summed in float64, which holds every product
    and partial sum exactly (multiples of 2^-22 below 256); + 0.5 and the truncating cast to uint8 are the
    shift. No clip is needed: bilinear weights are not negative and sum to at most 1 + K 2^-23, so the
    rounded value stays within 0..255. (Measured on one core, loaded machine, a [3, 224, 5, 263] tensor:
    Mul + ReduceSum 0.36 ms in float64 against 0.50 ms in int32, whose ReduceSum is the slow part.)"""
    import numpy as np
    from onnx import TensorProto

    gathered = g.node("Gather", [g.node("Cast", [planes], to=TensorProto.DOUBLE), taps.index], axis=1)
    weights = g.node("Unsqueeze", [taps.weights, g.const([2], np.int64)])  # [out, K, 1]
    summed = g.node("ReduceSum", [g.node("Mul", [gathered, weights]), g.const([2], np.int64)], keepdims=0)
    return g.node("Cast", [g.node("Add", [summed, g.const(0.5)])], to=TensorProto.UINT8)


def _planes(g: GraphParts) -> str:
    """``image`` uint8 [H, W, 3 n] (one RGB image, or n same-size ones side by side on the channel axis) as
    channel planes uint8 [3 n, H, W] (image-major: image i's R, G, B planes are rows 3i..3i+2).

    A batch rides on the channel axis because an ONNX input has one rank: a second ``images`` [n, H, W, 3]
    input would need a default (an initializer of that name), which onnxruntime warns about at every load and
    leaves out of ``get_inputs()`` in every language. The transpose is a 2-D one ([H W, 3 n] -> [3 n, H W]),
    which onnxruntime runs fast, and the reshapes around it keep its transpose optimiser from fusing it with
    the one after the crop into a single general permutation (ten times slower)."""
    import numpy as np

    dims = g.node("Shape", ["image"], "dims")
    hw = g.node("Slice", [dims, g.const([0], np.int64), g.const([2], np.int64)], "hw")
    flat = g.node("Reshape", ["image", g.node("Concat", [g.node("ReduceProd", [hw], keepdims=1),
                                                          g.const([-1], np.int64)], axis=0)])
    planes = g.node("Transpose", [flat], perm=[1, 0])  # [3 n, H W]
    return g.node("Reshape", [planes, g.node("Concat", [g.const([-1], np.int64), hw], axis=0)], "planes")


def image_graph(prep: Any) -> Any:
    """ModelProto: ``image`` (uint8 [H, W, 3], or [H, W, 3 n] for n same-size images stacked on the channel
    axis) -> ``prep.input_name`` (float32 [n, 3, size, size])."""
    import numpy as np
    from onnx import TensorProto, helper

    if prep.interpolation != "bilinear":
        raise BundleError(f"the backbone resizes images with {prep.interpolation!r} interpolation, which the bundle's "
                          "in-graph resize does not reproduce (it rebuilds Pillow's bilinear filter)",
                          hint="bundle a backbone with bilinear preprocessing, or serve this one with `headstart predict`")
    f64 = np.float64
    g = GraphParts("img_")
    planes = _planes(g)  # [3 n, H, W]
    shape = g.node("Cast", [g.node("Shape", [planes])], to=TensorProto.DOUBLE)
    h = g.node("Gather", [shape, g.const(1, np.int64)], "h")
    w = g.node("Gather", [shape, g.const(2, np.int64)], "w")
    resize, size = g.const(float(prep.resize), f64), g.const(float(prep.size), f64)
    portrait = g.node("LessOrEqual", [w, h])
    new_w = g.node("Where", [portrait, resize, g.node("Floor", [g.node("Div", [g.node("Mul", [resize, w]), h])])])
    new_h = g.node("Where", [portrait, g.node("Floor", [g.node("Div", [g.node("Mul", [resize, h]), w])]), resize])
    half = g.const(2.0, f64)
    left = g.node("Round", [g.node("Div", [g.node("Sub", [new_w, size]), half])], "left")
    top = g.node("Round", [g.node("Div", [g.node("Sub", [new_h, size]), half])], "top")
    sx, sy = g.node("Div", [w, new_w]), g.node("Div", [h, new_h])
    x0, x1 = g.node("Mul", [left, sx]), g.node("Mul", [g.node("Add", [left, size]), sx])
    y0, y1 = g.node("Mul", [top, sy]), g.node("Mul", [g.node("Add", [top, size]), sy])
    across, down = _coefficients(g, w, x0, x1, prep.size), _coefficients(g, h, y0, y1, prep.size)
    # only the pixels some tap reads, columns before rows (a gathered tap is a whole row): [3 n, W', H']
    one = lambda v: g.node("Unsqueeze", [v, g.const([0], np.int64)])  # noqa: E731
    box = g.node("Slice", [planes, g.node("Concat", [one(down.first), one(across.first)], axis=0),
                           g.node("Concat", [one(down.end), one(across.end)], axis=0), g.const([1, 2], np.int64)])
    columns = g.node("Transpose", [box], perm=[0, 2, 1])
    rows = _pass(g, columns, across)  # Pillow's horizontal pass: [3 n, size, H']
    resized = g.node("Reshape", [_pass(g, g.node("Transpose", [rows], perm=[0, 2, 1]), down),  # vertical pass
                                 g.const([-1, 3, prep.size, prep.size], np.int64)])  # [n, 3, size, size]
    # (v * (1/255) - mean) / std in float32, the operations headstart's lookup table was computed with
    scaled = g.node("Mul", [g.node("Cast", [resized], to=TensorProto.FLOAT), g.const(np.float32(1.0 / 255.0))])
    column = lambda v: g.const(np.asarray(v, np.float32).reshape(1, 3, 1, 1))  # noqa: E731
    g.node("Div", [g.node("Sub", [scaled, column(prep.mean)]), column(prep.std)], outputs=[prep.input_name])
    return g.model([helper.make_tensor_value_info("image", TensorProto.UINT8, ["height", "width", "channels"])],
                   [helper.make_tensor_value_info(prep.input_name, TensorProto.FLOAT, ["n", 3, prep.size, prep.size])],
                   "headstart_image_preprocessing")
