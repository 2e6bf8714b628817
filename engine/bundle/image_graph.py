"""Resize, crop and normalise as graph ops: ``image`` (uint8 [H, W, 3], one decoded RGB image of any size)
-> the backbone's pixel input (float32 [1, 3, size, size]), reproducing headstart's preprocessing
(:func:`headstart.engine.embed.imaging._resize_crop` + :func:`~headstart.engine.embed.imaging.normalise_batch`).

Pillow's bilinear ``resize(box=...)`` is rebuilt exactly, not approximated by ONNX ``Resize``: the same box
(as C floats, like Pillow's; shorter side to ``resize``, centre crop ``size``, offsets rounded half to even as Python's ``round``), the same
filter taps (triangle of support ``max(scale, 1)``, weights normalised per output pixel, then to integers of
22 fractional bits, Pillow's ``PRECISION_BITS``), a horizontal pass rounded to 8 bits, then a vertical one -
in int32 arithmetic, as Pillow's 8-bit kernels do. That is bit-exact where Pillow resamples rows first
(landscape and square images, many portrait ones, measured with Pillow 13); for portrait images Pillow 13
resamples columns first, and pixels then differ by at most one 8-bit level (the gate's image tolerance,
:data:`headstart.engine.bundle.gate.IMAGE_MAX_ABS_DIFF`). Normalisation is a lookup in the same float32 table
headstart uses. Decoding (format, EXIF orientation, alpha, JPEG draft) stays outside the graph: feed the
pixels of the decoded file. Memory: the horizontal pass gathers ``H x size x taps x 3`` int32 values (taps =
2 * ceil(W / resized width) + 1), e.g. 266 MB for an undrafted 4000 x 3000 PNG, 10 MB for a drafted JPEG.
"""

from __future__ import annotations

from typing import Any

from .graph_parts import GraphParts

PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2


def _coefficients(g: GraphParts, in_size: str, in0: str, in1: str, out: int) -> tuple[str, str]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for a bilinear filter, as graph ops:
    (tap indices int64 [out, K], integer weights int32 [out, K])."""
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
    taps = g.node("Add", [g.node("Mul", [g.node("Ceil", [support]), g.const(2.0, f64)]), g.const(1.0, f64)], "taps")
    positions = g.node("Range", [g.const(0.0, f64), g.const(float(out), f64), g.const(1.0, f64)], "xx")
    center = g.node("Add", [in0, g.node("Mul", [g.node("Add", [positions, g.const(0.5, f64)]), scale])], "center")
    xmin = g.node("Max", [g.node("Floor", [g.node("Add", [g.node("Sub", [center, support]), g.const(0.5, f64)])]),
                          g.const(0.0, f64)], "xmin")
    xend = g.node("Min", [g.node("Floor", [g.node("Add", [g.node("Add", [center, support]), g.const(0.5, f64)])]),
                          in_size], "xend")
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
    last = g.node("Sub", [in_size, g.const(1.0, f64)])
    index = g.node("Cast", [g.node("Min", [j, last])], to=TensorProto.INT64)
    return index, g.node("Cast", [kint], to=TensorProto.INT32)


def _pass(g: GraphParts, pixels: str, index: str, weights: str, axis: int) -> str:
    """One 8-bit resampling pass along ``axis`` of int32 [.., .., 3] ``pixels``: sum of taps x weights,
    + 2^21, >> 22, clipped to 0..255."""
    import numpy as np

    gathered = g.node("Gather", [pixels, index], axis=axis)  # axis 1: [H, S, K, 3]; axis 0: [S, K, W', 3]
    w = g.node("Unsqueeze", [weights, g.const([0, 3] if axis == 1 else [2, 3], np.int64)])  # beside the taps
    summed = g.node("ReduceSum", [g.node("Mul", [gathered, w]), g.const([axis + 1], np.int64)], keepdims=0)
    rounded = g.node("Div", [g.node("Add", [summed, g.const(np.int32(1 << (PRECISION_BITS - 1)))]),
                             g.const(np.int32(1 << PRECISION_BITS))])
    return g.node("Max", [g.node("Min", [rounded, g.const(np.int32(255))]), g.const(np.int32(0))])


def image_graph(prep: Any) -> Any:
    """ModelProto: ``image`` (uint8 [H, W, 3]) -> ``prep.input_name`` (float32 [1, 3, size, size])."""
    import numpy as np
    from onnx import TensorProto, helper

    from ..embed.imaging import _normalise_table

    f64 = np.float64
    g = GraphParts("img_")
    shape = g.node("Cast", [g.node("Shape", ["image"])], to=TensorProto.DOUBLE)
    h = g.node("Gather", [shape, g.const(0, np.int64)], "h")
    w = g.node("Gather", [shape, g.const(1, np.int64)], "w")
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
    ix, kx = _coefficients(g, w, x0, x1, prep.size)
    iy, ky = _coefficients(g, h, y0, y1, prep.size)
    pixels = g.node("Cast", ["image"], to=TensorProto.INT32)
    across = _pass(g, pixels, ix, kx, axis=1)  # [H, size, 3]
    resized = _pass(g, across, iy, ky, axis=0)  # [size, size, 3]
    table = _normalise_table(tuple(prep.mean), tuple(prep.std)).reshape(-1)  # [3 * 256], channel-major
    offsets = g.const(np.array([0, 256, 512], np.int64))
    flat = g.node("Add", [g.node("Cast", [resized], to=TensorProto.INT64), offsets])
    values = g.node("Gather", [g.const(table.astype(np.float32), hint="table"), flat], axis=0)  # [S, S, 3]
    chw = g.node("Transpose", [values], perm=[2, 0, 1])
    g.node("Unsqueeze", [chw, g.const([0], np.int64)], outputs=[prep.input_name])
    return g.model([helper.make_tensor_value_info("image", TensorProto.UINT8, ["height", "width", 3])],
                   [helper.make_tensor_value_info(prep.input_name, TensorProto.FLOAT, [1, 3, prep.size, prep.size])],
                   "headstart_image_preprocessing")
