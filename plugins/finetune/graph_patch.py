"""A fine-tuned backbone's ONNX graph from the base export: the tuned weights written into its initializers.

Tracing and fusing the whole body again costs seconds on a CPU, for a fine-tune that changed only the top
blocks. The base backbone's fp32 export (traced, fused, parity-checked) has the same architecture, so its
graph can take the new weights directly. Initializers are matched to parameters *by value* (the names
of fused or transposed weights are the exporter's own): an initializer equal to a base parameter, to its
transpose, or to the concatenation of three of them along the last axis (the fused Q/K/V projection)
gets the tuned values in the same form. :func:`graph_plan` returns ``None`` (trace instead) unless every
changed parameter lands somewhere and no match is ambiguous (two parameters with equal values); weights
that the exporter folded into others (e.g. batch norm into a convolution) have no match, so such a
backbone is traced as before. The export's parity gate compares the patched graph with the tuned PyTorch
model either way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

#: the part counts an initializer may be split into along its last axis (fused Q/K/V: 3)
SPLITS = (3,)
#: the folder under ``<home>/finetuned/`` where plans are kept per base export and set of changed parameters
PLANS = "plans"


def _key(arr: np.ndarray) -> tuple:
    arr = np.ascontiguousarray(arr)
    return arr.shape, arr.dtype.str, hashlib.blake2b(arr.tobytes(), digest_size=16).digest()


def _index(base: dict[str, np.ndarray]) -> dict[tuple, list[tuple[str, str]]]:
    index: dict[tuple, list[tuple[str, str]]] = {}
    for name, value in base.items():
        index.setdefault(_key(value), []).append((name, ""))
        if value.ndim == 2:
            index.setdefault(_key(value.T), []).append((name, "T"))
    return index


def _match(arr: np.ndarray, index: dict[tuple, list[tuple[str, str]]]) -> list[list[tuple[str, str]]] | None:
    """The candidates of each part ``arr`` is made of (whole, or split along the last axis), or None."""
    found = index.get(_key(arr))
    if found is not None:
        return [found]
    for parts in SPLITS:
        if arr.ndim in (1, 2) and arr.shape[-1] % parts == 0 and arr.shape[-1] > parts:
            chunks = [index.get(_key(c)) for c in np.split(arr, parts, axis=-1)]
            if all(c is not None for c in chunks):
                return chunks  # type: ignore[return-value]
    return None


def graph_plan(graph: Path, base: dict[str, np.ndarray], changed: set[str]) -> dict[str, list[list[str]]] | None:
    """{initializer name: [[parameter, form], ...]} for every initializer holding a changed parameter, or
    None when a changed parameter is found nowhere or where it is cannot be told apart from another one."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph))
    shapes = {base[n].shape for n in changed} | {base[n].T.shape for n in changed}
    index = _index({n: v for n, v in base.items() if v.shape in shapes})  # every parameter a changed one could be
    plan: dict[str, list[list[str]]] = {}
    placed: set[str] = set()
    for init in model.graph.initializer:
        dims = tuple(init.dims)
        if dims not in shapes and not any(dims[:-1] + (dims[-1] // p,) in shapes for p in SPLITS if dims):
            continue  # cannot hold a changed parameter (the big embedding tables are never read)
        parts = _match(numpy_helper.to_array(init), index)
        if parts is None or not any(n in changed for group in parts for n, _ in group):
            continue
        if any(len(group) > 1 for group in parts):
            return None  # equal values: which parameter this is cannot be told
        plan[init.name] = [[group[0][0], group[0][1]] for group in parts]
        placed |= {group[0][0] for group in parts}
    return plan if changed <= placed else None


def write_patched(graph: Path, plan: dict[str, list[list[str]]], tuned: dict[str, np.ndarray], out: Path) -> None:
    """Copy ``graph`` to ``out`` with the planned initializers replaced by the ``tuned`` values."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph))
    for init in model.graph.initializer:
        parts = plan.get(init.name)
        if parts is None:
            continue
        old = numpy_helper.to_array(init)
        values = [tuned[n].T if form == "T" else tuned[n] for n, form in parts]
        new = (values[0] if len(values) == 1 else np.concatenate(values, axis=-1)).astype(old.dtype)
        if new.shape != old.shape:
            raise ValueError(f"initializer {init.name}: tuned shape {new.shape} != {old.shape}")
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new), init.name))
    onnx.save(model, str(out))


def plan_for(base_spec: Any, base: dict[str, np.ndarray], tuned: dict[str, np.ndarray],
             cache: Path | None = None) -> dict[str, Any] | None:
    """The patch plan of a fine-tune against the base backbone's fp32 export (exported if not cached):
    ``{"base_export": fingerprint, "plan": ..., "offsets": ...}`` (an empty plan when nothing changed: the base
    graph as it is), or None when the graph must be traced instead.

    ``cache``: a folder where the plan is kept per (base export, set of changed parameters): it depends on
    nothing else (the export's fingerprint fixes its graph and the base weights), and every fine-tune of the
    same blocks changes the same parameters, so the graph is read and the parameters hashed once."""
    import json

    from headstart.sdk import export_backbone, write_json_atomic

    changed = {n for n, v in tuned.items() if n in base and not np.array_equal(v, base[n])}
    exported = export_backbone(base_spec, "fp32")
    names = hashlib.blake2b("\n".join(sorted(changed)).encode(), digest_size=8).hexdigest()
    path = cache / f"{exported.fingerprint}-{names}.json" if cache is not None else None
    if path is not None and path.is_file():
        try:
            kept = json.loads(path.read_text())
            if kept.get("base_export") == exported.fingerprint and kept.get("changed") == sorted(changed):
                return None if kept["plan"] is None else {k: kept[k] for k in ("base_export", "plan", "offsets")}
        except (OSError, ValueError, KeyError):
            pass  # an unreadable cache entry is made again
    plan = graph_plan(exported.path, base, changed)
    found = None if plan is None else {"base_export": exported.fingerprint, "plan": plan,
                                       "offsets": raw_offsets(exported.path, plan)}
    if path is not None:
        write_json_atomic(path, {"base_export": exported.fingerprint, "changed": sorted(changed),
                                 "plan": None if found is None else plan,
                                 "offsets": None if found is None else found["offsets"]})
    return found


def raw_offsets(graph: Path, plan: dict[str, list[list[str]]]) -> dict[str, dict[str, Any]] | None:
    """{initializer: {at, bytes, blake2b, dtype, shape}}: where each planned initializer's raw bytes are in the
    serialised ``graph``, or None when one is not stored as raw little-endian bytes found exactly once.
    With them the patched graph is a byte copy of the base with those spans rewritten (same shapes and
    dtypes, so the same lengths): no protobuf parse or re-serialisation of the whole model."""
    import onnx
    from onnx import helper

    if not plan:
        return {}
    model = onnx.load(str(graph))
    data = graph.read_bytes()
    out: dict[str, dict[str, Any]] = {}
    for init in model.graph.initializer:
        if init.name not in plan:
            continue
        raw = init.raw_data
        if not raw or init.data_location == onnx.TensorProto.EXTERNAL:
            return None
        at = data.find(raw)
        if at < 0 or data.find(raw, at + 1) >= 0:
            return None  # not there, or twice: the span cannot be told
        out[init.name] = {"at": at, "bytes": len(raw), "blake2b": hashlib.blake2b(raw, digest_size=16).hexdigest(),
                          "dtype": np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).newbyteorder("<").str,
                          "shape": list(init.dims)}
    return out if set(out) == set(plan) else None


def write_spliced(graph: Path, plan: dict[str, list[list[str]]], offsets: dict[str, dict[str, Any]],
                  tuned: dict[str, np.ndarray], out: Path) -> bool:
    """Write ``graph`` with the planned initializers' bytes replaced in place; False (nothing written) when
    the base graph's bytes at the recorded offsets are not the ones the plan was made on. Only those spans
    are read (to check them); the kernel copies the rest of the file."""
    import os

    patches = []
    with open(graph, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        for name, parts in plan.items():
            span = offsets[name]
            at, count = span["at"], span["bytes"]
            if at + count > size or hashlib.blake2b(os.pread(fh.fileno(), count, at),
                                                     digest_size=16).hexdigest() != span["blake2b"]:
                return False
            values = [tuned[n].T if form == "T" else tuned[n] for n, form in parts]
            new = (values[0] if len(values) == 1 else np.concatenate(values, axis=-1)).astype(np.dtype(span["dtype"]))
            if list(new.shape) != span["shape"] or new.nbytes != count:
                raise ValueError(f"initializer {name}: tuned shape {new.shape} != {tuple(span['shape'])}")
            patches.append((at, count, np.ascontiguousarray(new).tobytes()))
    patches.sort()
    if any(a + n > b for (a, n, _), (b, _, _) in zip(patches, patches[1:])):
        return False  # overlapping spans: not the graph the plan was made on
    from headstart.sdk import write_patched_copy_atomic

    # not fsynced here: the export fsyncs every file of the folder while its parity gate runs, before its manifest
    write_patched_copy_atomic(graph, out, [(at, new) for at, _, new in patches], durable=False)
    return True


def export_patched(base_spec: Any, patch: dict[str, Any], weights: str, out: Path) -> None:
    """The fine-tuned spec's ``export_onnx``: the base export with the tuned weights at ``weights`` patched in."""
    from safetensors.numpy import load_file

    from headstart.sdk import BackboneError, export_backbone

    exported = export_backbone(base_spec, "fp32")
    if exported.fingerprint != patch["base_export"]:
        raise BackboneError(f"the fine-tuned weights {weights} were planned against export {patch['base_export']} of "
                            f"'{base_spec.name}', this home has {exported.fingerprint} (other library versions)",
                            hint="fine-tune again in this environment, or export with the versions it was made with")
    tuned = load_file(weights)
    offsets = patch.get("offsets")
    if offsets and write_spliced(exported.path, patch["plan"], offsets, tuned, out):
        return
    write_patched(exported.path, patch["plan"], tuned, out)
