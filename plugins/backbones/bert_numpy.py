"""A BERT text encoder in numpy: embeddings of texts, and training of its top blocks, without importing torch.

A few-shot fine-tune on a CPU is over in seconds, and importing torch alone takes one or two of them;
numpy's matrix products (OpenBLAS) are also as fast as or faster than torch's on the small matrices a few
dozen short texts make. :class:`NumpyBert` computes what the plain-PyTorch twin (bert_body.py) and Hugging
Face's eager ``BertModel`` compute (absolute positions, softmax attention over unmasked keys, erf GELU,
post-norm residual blocks, mean or CLS pooling, optional L2 normalisation), in float32, with the same
parameter names, and the backward pass of any top blocks (the stem's too) written out by hand.

Texts are packed: the dense layers run on the real tokens only (no work on padding); attention alone
sees the padded ``batch x length`` layout, with padded keys masked. Dropout (training only) is drawn from
the ``numpy.random.Generator`` the caller passes, at the places the PyTorch module applies it (attention
probabilities, after each block's two dense outputs); the cached lower blocks run without it, as they do
in the PyTorch path.
:func:`bert_numpy_encoder` returns ``None`` for a folder it does not cover (the caller trains the
PyTorch module then).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .bert_body import PREFIXES, WEIGHTS, read_config, supported

#: float32 erf (Eigen's rational approximation on [-4, 4], within 5e-7 of the exact value)
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)
_INV_SQRT2 = np.float32(1 / math.sqrt(2))
_INV_SQRT_2PI = np.float32(1 / math.sqrt(2 * math.pi))


def bert_numpy_encoder(folder: str | Path, pooling: str, normalize: bool,
                       inputs: tuple[str, ...] = ("input_ids", "attention_mask")) -> "NumpyBert | None":
    """The numpy BERT text encoder of ``folder``, or None when not covered (architecture, pooling, a weight
    layout or dtype it does not read)."""
    config = read_config(folder)
    if config is None or not supported(config) or pooling not in ("mean", "cls"):
        return None
    from safetensors.numpy import load_file

    try:
        stored = load_file(str(Path(folder) / WEIGHTS))
    except (TypeError, ValueError, OSError):  # e.g. bfloat16 tensors, which numpy has no dtype for
        return None
    state = {}
    for name, value in stored.items():
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        state[f"model.{name}"] = value
    shapes = parameter_shapes(config)
    params = {}
    for name, shape in shapes.items():
        value = state.get(name)
        if value is None and name.startswith("model.pooler."):
            value = np.zeros(shape, np.float32)  # not part of the pooled embedding
        if value is None or value.shape != shape or value.dtype.kind != "f":
            return None
        params[name] = np.ascontiguousarray(value, dtype=np.float32)
    return NumpyBert(config, params, pooling, normalize, "token_type_ids" in inputs)


def parameter_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes in the PyTorch twin's ``named_parameters`` order."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "model.embeddings.word_embeddings.weight": (config["vocab_size"], hidden),
        "model.embeddings.position_embeddings.weight": (config["max_position_embeddings"], hidden),
        "model.embeddings.token_type_embeddings.weight": (config.get("type_vocab_size", 2), hidden),
        "model.embeddings.LayerNorm.weight": (hidden,), "model.embeddings.LayerNorm.bias": (hidden,)}
    parts = (("attention.self.query", (hidden, hidden)), ("attention.self.key", (hidden, hidden)),
             ("attention.self.value", (hidden, hidden)), ("attention.output.dense", (hidden, hidden)),
             ("attention.output.LayerNorm", (hidden,)), ("intermediate.dense", (inner, hidden)),
             ("output.dense", (hidden, inner)), ("output.LayerNorm", (hidden,)))
    for i in range(config["num_hidden_layers"]):
        for part, shape in parts:
            shapes[f"model.encoder.layer.{i}.{part}.weight"] = shape
            shapes[f"model.encoder.layer.{i}.{part}.bias"] = shape[:1]
    shapes["model.pooler.dense.weight"] = (hidden, hidden)
    shapes["model.pooler.dense.bias"] = (hidden,)
    return shapes


#: items per inference chunk (memory stays small on long sets)
CHUNK = 64


#: elements per block of the element-wise GELU (its temporaries stay in the CPU's cache)
BLOCK = 16384


def erf(x: np.ndarray) -> np.ndarray:
    """float32 erf, vectorised."""
    out = np.empty_like(x)
    _erf_into(np.clip(x, -4.0, 4.0), out, np.empty_like(x), np.empty_like(x))
    return out


def _erf_into(x: np.ndarray, out: np.ndarray, x2: np.ndarray, q: np.ndarray) -> None:
    """``out = erf(x)`` for ``x`` clipped to [-4, 4]; ``x2``, ``q``: scratch arrays shaped like ``x``."""
    np.multiply(x, x, out=x2)
    np.multiply(x2, _ERF_P[0], out=out)
    out += _ERF_P[1]
    for c in _ERF_P[2:]:
        out *= x2
        out += c
    out *= x
    np.multiply(x2, _ERF_Q[0], out=q)
    q += _ERF_Q[1]
    for c in _ERF_Q[2:]:
        q *= x2
        q += c
    out /= q


def _gelu(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(GELU(x), Phi(x)) of a float32 array, block by block: Phi = (1 + erf(x / sqrt 2)) / 2, GELU = x Phi."""
    flat = x.reshape(-1)
    cdf = np.empty_like(flat)
    t, x2, q = (np.empty(min(BLOCK, flat.size), np.float32) for _ in range(3))
    for start in range(0, flat.size, BLOCK):
        block, part = flat[start:start + BLOCK], cdf[start:start + BLOCK]
        n = len(block)
        np.multiply(block, _INV_SQRT2, out=t[:n])
        np.clip(t[:n], -4.0, 4.0, out=t[:n])
        _erf_into(t[:n], part, x2[:n], q[:n])
        part += 1
        part *= 0.5
    cdf = cdf.reshape(x.shape)
    return x * cdf, cdf


class _Packing:
    """Where the real tokens of a ``rows x length`` attention mask are (row-major, so grouped by item)."""

    def __init__(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask) != 0
        self.rows, self.length = mask.shape
        self.first_unmasked = bool(mask[:, 0].all()) if self.length else False
        self.index = np.flatnonzero(mask)
        self.counts = mask.sum(1)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.positions = self.index % max(self.length, 1)
        # Hugging Face's additive mask: the float32 minimum on padded keys (exp() makes it exactly 0)
        self.bias = np.where(mask, np.float32(0), np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]

    def pad(self, packed: np.ndarray) -> np.ndarray:
        """``tokens x width`` -> ``rows x length x width`` (zeros on padding)."""
        out = np.zeros((self.rows * self.length, packed.shape[1]), packed.dtype)
        out[self.index] = packed
        return out.reshape(self.rows, self.length, -1)

    def unpad(self, padded: np.ndarray) -> np.ndarray:
        return padded.reshape(self.rows * self.length, -1)[self.index]


def _dropout(x: np.ndarray, rate: float, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray | None]:
    """x with elements zeroed at ``rate`` and the rest scaled by 1/(1-rate) (torch's dropout), and the scale."""
    if rng is None or rate <= 0:
        return x, None
    scale = (rng.random(x.shape, dtype=np.float32) >= rate) * np.float32(1 / (1 - rate))
    return x * scale, scale


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float
                ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    centred = x - x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(np.mean(centred * centred, -1, keepdims=True) + np.float32(eps))
    centred *= rstd
    return centred * weight + bias, (centred, rstd)


def _layer_norm_back(grad: np.ndarray, saved: tuple[np.ndarray, np.ndarray], weight: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d input, d weight, d bias) of a LayerNorm over the last axis."""
    normed, rstd = saved
    d_weight, d_bias = (grad * normed).sum(0), grad.sum(0)
    d_normed = grad * weight
    d_in = d_normed - d_normed.mean(-1, keepdims=True) - normed * (d_normed * normed).mean(-1, keepdims=True)
    d_in *= rstd
    return d_in, d_weight, d_bias


class NumpyBert:
    """A BERT text encoder over numpy float32 arrays (see the module docstring).

    Blocks are numbered as ``group_blocks`` numbers the PyTorch twin's parameters: block 0 is the stem
    (embeddings), block ``b`` is encoder layer ``b - 1``. ``params`` maps the twin's parameter names to arrays;
    training changes them in place."""

    framework = "numpy"

    def __init__(self, config: dict[str, Any], params: dict[str, np.ndarray], pooling: str, normalize: bool,
                 token_types: bool) -> None:
        self.config, self.params = config, params
        self.pooling, self.normalize, self.token_types = pooling, normalize, token_types
        self.hidden = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.size = self.hidden // self.heads
        self.layers = config["num_hidden_layers"]
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.hidden_dropout = float(config.get("hidden_dropout_prob", 0.1))
        self.attention_dropout = float(config.get("attention_probs_dropout_prob", 0.1))

    # -- inference -------------------------------------------------------------------------------------------
    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 token_type_ids: np.ndarray | None = None) -> np.ndarray:
        """Pooled (and L2-normalised, if the backbone is) float32 embeddings of a collated batch."""
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        out = [self.forward({k: v[s:s + CHUNK] for k, v in batch.items()})[0]
               for s in range(0, len(input_ids), CHUNK)]
        return np.concatenate(out) if out else np.zeros((0, self.hidden), np.float32)

    def prefix(self, batch: dict[str, np.ndarray], blocks: int) -> np.ndarray:
        """The output of the lowest ``blocks`` blocks (1: the embeddings), ``rows x length x hidden``, no dropout."""
        pack = _Packing(batch["attention_mask"])
        x = self._embed(batch, pack, None, None)
        for i in range(blocks - 1):
            x = self._layer(i, x, pack, None, None)
        return pack.pad(x)

    # -- training --------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, np.ndarray], first: int = 0, states: np.ndarray | None = None,
                rng: np.random.Generator | None = None, record: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
        """(embeddings, tape). Blocks from ``first`` on run here; ``states`` is the output of the blocks below
        (:meth:`prefix`, possibly trimmed to the batch's width), computed when None. ``rng``: dropout (training);
        ``record``: keep what :meth:`backward` needs in the tape."""
        pack = _Packing(batch["attention_mask"])
        tape: dict[str, Any] = {"pack": pack, "first": first, "layers": [], "stem": None}
        if first == 0:
            x = self._embed(batch, pack, rng, tape if record else None)
        else:
            x = pack.unpad(states) if states is not None else pack.unpad(self.prefix(batch, first))
        for i in range(max(first - 1, 0), self.layers):
            x = self._layer(i, x, pack, rng, tape["layers"] if record else None)
        pooled = self._pool(x, pack)
        if not self.normalize:
            return pooled, tape
        norm = np.maximum(np.sqrt((pooled * pooled).sum(1, keepdims=True)), np.float32(1e-12))
        out = pooled / norm
        tape.update(norm=norm, out=out)
        return out, tape

    def backward(self, tape: dict[str, Any], grad: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of every parameter of the blocks the recorded forward ran (the pooler gets none)."""
        pack = tape["pack"]
        grad = np.asarray(grad, np.float32)
        if self.normalize:
            out = tape["out"]
            grad = (grad - out * (out * grad).sum(1, keepdims=True)) / tape["norm"]
        if self.pooling == "mean":
            tokens = np.repeat(grad / np.maximum(pack.counts, 1e-9).astype(np.float32)[:, None], pack.counts, axis=0)
        else:
            tokens = np.zeros((len(pack.index), self.hidden), np.float32)
            tokens[pack.starts[pack.counts > 0]] = grad[pack.counts > 0]
        grads: dict[str, np.ndarray] = {}
        for entry in reversed(tape["layers"]):
            tokens = self._layer_back(entry, tokens, pack, grads)
        if tape["stem"] is not None:
            self._embed_back(tape["stem"], tokens, pack, grads)
        return grads

    def block_names(self, block: int) -> list[str]:
        """The trainable parameter names of block ``block`` (0: the stem)."""
        prefix = "model.embeddings." if block == 0 else f"model.encoder.layer.{block - 1}."
        return [n for n in self.params if n.startswith(prefix)]

    # -- the pieces ------------------------------------------------------------------------------------------
    def _embed(self, batch: dict[str, np.ndarray], pack: _Packing, rng: np.random.Generator | None,
               tape: dict[str, Any] | None) -> np.ndarray:
        p = self.params
        ids = np.asarray(batch["input_ids"]).reshape(-1)[pack.index]
        given = batch.get("token_type_ids") if self.token_types else None
        types = np.asarray(given).reshape(-1)[pack.index] if given is not None else np.zeros_like(ids)
        x = p["model.embeddings.word_embeddings.weight"][ids] + p["model.embeddings.token_type_embeddings.weight"][types]
        x += p["model.embeddings.position_embeddings.weight"][pack.positions]
        x, norm = _layer_norm(x, p["model.embeddings.LayerNorm.weight"], p["model.embeddings.LayerNorm.bias"], self.eps)
        x, scale = _dropout(x, self.hidden_dropout, rng)
        if tape is not None:
            tape["stem"] = (ids, types, norm, scale)
        return x

    def _embed_back(self, saved: tuple, grad: np.ndarray, pack: _Packing, grads: dict[str, np.ndarray]) -> None:
        ids, types, norm, scale = saved
        p, stem = self.params, "model.embeddings."
        if scale is not None:
            grad = grad * scale
        grad, grads[stem + "LayerNorm.weight"], grads[stem + "LayerNorm.bias"] = _layer_norm_back(
            grad, norm, p[stem + "LayerNorm.weight"])
        for table, rows in (("word_embeddings", ids), ("position_embeddings", pack.positions),
                            ("token_type_embeddings", types)):
            full = np.zeros_like(p[stem + table + ".weight"])
            np.add.at(full, rows, grad)
            grads[stem + table + ".weight"] = full

    def _weights(self, i: int) -> dict[str, np.ndarray]:
        p, pre = self.params, f"model.encoder.layer.{i}."
        parts = ("attention.self.query", "attention.self.key", "attention.self.value")
        return {"qkv": np.concatenate([p[pre + n + ".weight"] for n in parts]),
                "qkv_bias": np.concatenate([p[pre + n + ".bias"] for n in parts]),
                **{k: p[pre + n] for k, n in (
                    ("out", "attention.output.dense.weight"), ("out_bias", "attention.output.dense.bias"),
                    ("ln1", "attention.output.LayerNorm.weight"), ("ln1_bias", "attention.output.LayerNorm.bias"),
                    ("inner", "intermediate.dense.weight"), ("inner_bias", "intermediate.dense.bias"),
                    ("down", "output.dense.weight"), ("down_bias", "output.dense.bias"),
                    ("ln2", "output.LayerNorm.weight"), ("ln2_bias", "output.LayerNorm.bias"))}}

    def _layer(self, i: int, x: np.ndarray, pack: _Packing, rng: np.random.Generator | None,
               tape: list | None) -> np.ndarray:
        w = self._weights(i)
        rows, length, heads, size = pack.rows, pack.length, self.heads, self.size
        qkv = x @ w["qkv"].T
        qkv += w["qkv_bias"]
        q, k, v = pack.pad(qkv).reshape(rows, length, 3, heads, size).transpose(2, 0, 3, 1, 4)
        probs = q @ k.transpose(0, 1, 3, 2)
        probs /= np.float32(math.sqrt(size))
        probs += pack.bias
        probs -= probs.max(-1, keepdims=True)
        np.exp(probs, out=probs)
        probs /= probs.sum(-1, keepdims=True)
        kept, attn_scale = _dropout(probs, self.attention_dropout, rng)
        ctx = pack.unpad((kept @ v).transpose(0, 2, 1, 3))
        attended = ctx @ w["out"].T
        attended += w["out_bias"]
        attended, out_scale = _dropout(attended, self.hidden_dropout, rng)
        attended += x
        h1, norm1 = _layer_norm(attended, w["ln1"], w["ln1_bias"], self.eps)
        inner = h1 @ w["inner"].T
        inner += w["inner_bias"]
        act, cdf = _gelu(inner)
        down = act @ w["down"].T
        down += w["down_bias"]
        down, down_scale = _dropout(down, self.hidden_dropout, rng)
        down += h1
        out, norm2 = _layer_norm(down, w["ln2"], w["ln2_bias"], self.eps)
        if tape is not None:
            tape.append({"i": i, "w": w, "x": x, "q": q, "k": k, "v": v, "probs": probs, "kept": kept,
                         "attn_scale": attn_scale, "ctx": ctx, "out_scale": out_scale, "h1": h1, "norm1": norm1,
                         "inner": inner, "cdf": cdf, "act": act, "down_scale": down_scale, "norm2": norm2})
        return out

    def _layer_back(self, t: dict[str, Any], grad: np.ndarray, pack: _Packing,
                    grads: dict[str, np.ndarray]) -> np.ndarray:
        w, pre = t["w"], f"model.encoder.layer.{t['i']}."
        rows, length, heads, size = pack.rows, pack.length, self.heads, self.size
        d_down, grads[pre + "output.LayerNorm.weight"], grads[pre + "output.LayerNorm.bias"] = _layer_norm_back(
            grad, t["norm2"], w["ln2"])
        d_h1 = d_down
        if t["down_scale"] is not None:
            d_down = d_down * t["down_scale"]
        grads[pre + "output.dense.weight"], grads[pre + "output.dense.bias"] = d_down.T @ t["act"], d_down.sum(0)
        d_inner = d_down @ w["down"]
        inner = t["inner"]
        slope = np.square(inner)
        slope *= -0.5
        np.exp(slope, out=slope)
        slope *= inner
        slope *= _INV_SQRT_2PI
        slope += t["cdf"]
        d_inner *= slope
        grads[pre + "intermediate.dense.weight"], grads[pre + "intermediate.dense.bias"] = (d_inner.T @ t["h1"],
                                                                                            d_inner.sum(0))
        d_h1 = d_h1 + d_inner @ w["inner"]
        d_att, grads[pre + "attention.output.LayerNorm.weight"], grads[pre + "attention.output.LayerNorm.bias"] = \
            _layer_norm_back(d_h1, t["norm1"], w["ln1"])
        d_x = d_att
        if t["out_scale"] is not None:
            d_att = d_att * t["out_scale"]
        grads[pre + "attention.output.dense.weight"], grads[pre + "attention.output.dense.bias"] = (
            d_att.T @ t["ctx"], d_att.sum(0))
        d_ctx = pack.pad(d_att @ w["out"]).reshape(rows, length, heads, size).transpose(0, 2, 1, 3)
        d_kept = d_ctx @ t["v"].transpose(0, 1, 3, 2)
        d_v = t["kept"].transpose(0, 1, 3, 2) @ d_ctx
        if t["attn_scale"] is not None:
            d_kept *= t["attn_scale"]
        probs = t["probs"]
        d_scores = d_kept - (d_kept * probs).sum(-1, keepdims=True)
        d_scores *= probs
        d_scores /= np.float32(math.sqrt(size))
        d_q, d_k = d_scores @ t["k"], d_scores.transpose(0, 1, 3, 2) @ t["q"]
        d_qkv = np.empty((rows, length, 3, heads, size), np.float32)  # the forward's q, k, v layout
        for j, part in enumerate((d_q, d_k, d_v)):
            d_qkv[:, :, j] = part.transpose(0, 2, 1, 3)
        d_qkv = pack.unpad(d_qkv)
        d_w, d_b = d_qkv.T @ t["x"], d_qkv.sum(0)
        for j, name in enumerate(("query", "key", "value")):
            part = slice(j * self.hidden, (j + 1) * self.hidden)
            grads[f"{pre}attention.self.{name}.weight"] = d_w[part]
            grads[f"{pre}attention.self.{name}.bias"] = d_b[part]
        d_x = d_x + d_qkv @ w["qkv"]
        return d_x

    def _pool(self, x: np.ndarray, pack: _Packing) -> np.ndarray:
        present = pack.counts > 0
        pooled = np.zeros((pack.rows, self.hidden), np.float32)
        if self.pooling == "cls":
            if not pack.first_unmasked:
                raise ValueError("CLS pooling needs the first position of every item unmasked (right padding)")
            pooled[present] = x[pack.starts[present]]
            return pooled
        if present.any():
            pooled[present] = np.add.reduceat(x, pack.starts[present], axis=0)
        pooled /= np.maximum(pack.counts, 1e-9).astype(np.float32)[:, None]
        return pooled
