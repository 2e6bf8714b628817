"""Export a backbone to ONNX once, gate it on parity, and cache it by fingerprint.

Cache entry: ``<home>/exports/<name>/<fingerprint>/{model.onnx, manifest.json}``. Files
are written atomically and the manifest last: a folder without a manifest does not
exist. A cache hit (:func:`find_export`) reads JSON and hashes nothing but small
metadata (weight hashes are cached by path, size and mtime): it never imports torch.

Parity: the probe set (>= 16 items with edge cases) runs through the reference
(PyTorch for ``build_torch`` specs; the fp32 graph for bring-your-own ONNX, one item
at a time against batches) and the candidate graph in batches of 4, so padding bugs
show up. fp32 needs min cosine >= 0.9999 and max abs diff <= 1e-4; int8 min cosine
>= 0.98 and fp16 >= 0.999 by default (``min_cosine=`` overrides). A miss raises
:class:`ExportParityError` and leaves no cache entry. Static int8 (images, arrays) is
gated on the calibration items held out from calibrating (its ranges are fitted to the
user's data); the probe set's figures are kept beside it in the manifest.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..errors import BackboneError, ConfigError
from ..store.atomic import copy_file_atomic, write_bytes_atomic, write_json_atomic
from .fingerprint import PRECISIONS, calibration_digest, fingerprint_key, fingerprint_of, safe_dirname

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..config import Settings
    from .spec import BackboneSpec

MODEL_FILE = "model.onnx"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ExportedBackbone:
    """A cached, parity-checked ONNX export."""

    name: str
    fingerprint: str
    precision: str
    path: Path
    manifest: dict[str, Any] = field(repr=False)
    parity: dict[str, Any] = field(repr=False)
    spec: "BackboneSpec" = field(repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])


def _settings(settings: "Settings | None", engine: Any) -> "Settings":
    if settings is not None:
        return settings
    if engine is None:
        from ..plugins import get_engine

        engine = get_engine()
    return engine.settings


def _static_int8(spec: "BackboneSpec", precision: str) -> bool:
    return precision == "int8" and spec.modality != "text"


def entry_dir(spec: "BackboneSpec", fingerprint: str, settings: "Settings") -> Path:
    return settings.exports_dir / safe_dirname(spec.name) / fingerprint


def _load(spec: "BackboneSpec", folder: Path) -> ExportedBackbone | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return ExportedBackbone(name=spec.name, fingerprint=manifest["fingerprint"], precision=manifest["precision"],
                            path=folder / MODEL_FILE, manifest=manifest, parity=manifest["parity"], spec=spec)


def find_export(spec: "BackboneSpec", precision: str = "fp32", settings: "Settings | None" = None, *,
                calibration: Iterable[Any] | None = None) -> ExportedBackbone | None:
    """The cached export of ``spec`` at ``precision``, or ``None``. Never imports torch.

    For statically quantised (int8 image/numeric) exports without ``calibration`` the
    newest entry calibrated on any data is returned.
    """
    settings = _settings(settings, None)
    calib = calibration_digest(calibration) if calibration is not None and _static_int8(spec, precision) else None
    key = fingerprint_key(spec, precision, settings.exports_dir, calib)
    fp = fingerprint_of(key)
    hit = _load(spec, entry_dir(spec, fp, settings))
    if hit is not None or not _static_int8(spec, precision) or calibration is not None:
        return hit
    base = fingerprint_of({**key, "calibration": None})
    found = [e for m in sorted((settings.exports_dir / safe_dirname(spec.name)).glob(f"*/{MANIFEST}"))
             if (e := _load(spec, m.parent)) is not None and e.manifest.get("base_fingerprint") == base]
    return max(found, key=lambda e: e.manifest.get("created", ""), default=None)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock so two processes do not export the same entry at once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def export(backbone: "str | BackboneSpec", precision: str = "fp32", *, settings: "Settings | None" = None,
           engine: Any = None, calibration: Iterable[Any] | None = None, force: bool = False,
           min_cosine: float | None = None, reference: Any = None) -> ExportedBackbone:
    """Export ``backbone`` at ``precision`` (fp32 | fp16 | int8), or return the cached export.

    ``calibration``: raw items (texts, image bytes, arrays) of the user's data for static
    int8 quantisation of image/numeric backbones. ``force`` re-exports over a cached entry.
    ``reference``: the backbone's model already in memory (PyTorch in eval mode, or its numpy twin; e.g. the
    one a finetuner just trained), the fp32 parity gate's reference instead of one built from the spec.
    """
    from .resolve import resolve_backbone

    spec = resolve_backbone(backbone, engine)
    settings = _settings(settings, engine)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    items = list(calibration) if calibration is not None else None
    if _static_int8(spec, precision) and not items:
        raise ConfigError(f"int8 for {spec.modality} backbone '{spec.name}' is calibrated on your data: none was given",
                          hint="pass a few hundred representative items (calibration=..., or --calibrate DIR)")
    calib = calibration_digest(items) if items and _static_int8(spec, precision) else None
    key = fingerprint_key(spec, precision, settings.exports_dir, calib)
    fp = fingerprint_of(key)
    folder = entry_dir(spec, fp, settings)
    if not force and (hit := _load(spec, folder)) is not None:
        return hit
    with _lock(folder.parent / f".{fp}.lock"):
        if not force and (hit := _load(spec, folder)) is not None:
            return hit
        (folder / MANIFEST).unlink(missing_ok=True)
        started = time.perf_counter()
        try:
            manifest = _build(spec, precision, folder, settings, engine, items, min_cosine, reference)
        except BaseException:
            for leftover in folder.glob("*"):
                leftover.unlink(missing_ok=True)
            raise
        manifest.update(name=spec.name, fingerprint=fp, precision=precision, key=key,
                        base_fingerprint=fingerprint_of({**key, "calibration": None}), dim=spec.dim,
                        spec=spec.describe(), versions=_versions(), created=_now(),
                        export_seconds=round(time.perf_counter() - started, 2))
        write_json_atomic(folder / MANIFEST, manifest)
    loaded = _load(spec, folder)
    assert loaded is not None
    return loaded


def _build(spec: "BackboneSpec", precision: str, folder: Path, settings: "Settings", engine: Any,
           items: list[Any] | None, min_cosine: float | None, reference: Any = None) -> dict[str, Any]:
    """Write the graph into ``folder``, check parity, return the manifest's content (no identity yet).

    With a ``reference`` model in memory its probe outputs are computed while the graph is written and the
    new graph runs the probe; the files are flushed to the disk, hashed and the opset read while the parity gate
    runs (hashing, file I/O and the runtimes release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from .parity import check_parity, parity_on, probe_batches, reference_outputs
    from .preprocess import make_preprocessor

    pre = make_preprocessor(spec)
    probe = probe_batches(spec, pre)
    out = folder / MODEL_FILE
    folder.mkdir(parents=True, exist_ok=True)
    fp32_torch = precision == "fp32" and spec.build_torch is not None
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="headstart-export") as pool:
        expected = pool.submit(reference_outputs, spec, probe, reference, out) if fp32_torch and reference is not None \
            else None
        info, module, parity, probe, reference_graph = _write_graph(spec, precision, folder, settings, engine, items,
                                                                    pre, probe, min_cosine)
        paths = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST]
        hashed = pool.submit(lambda: ({p.name: _durable_sha(p) for p in paths}, _opset(out)))
        if parity is None:
            figures, ref_kind = parity_on(spec, probe, module, out, precision, reference_graph,
                                          expected=expected.result if expected is not None else None)
            parity = {**check_parity(figures, spec.name, precision, min_cosine), "reference": ref_kind}
        files, opset = hashed.result()
    return {**info, "parity": parity, "files": files, "inputs": list(probe[0]),
            "output": spec.output_name, "opset": opset}


def _write_graph(spec: "BackboneSpec", precision: str, folder: Path, settings: "Settings", engine: Any,
                 items: list[Any] | None, pre: Any, probe: list[Any], min_cosine: float | None
                 ) -> tuple[dict[str, Any], Any, dict[str, Any] | None, list[Any], Path]:
    """Write ``folder/model.onnx``: traced (or the spec's own exporter), copied, or quantised from the fp32
    export. Returns (manifest info, the PyTorch module traced if any, the parity figures if the int8 build
    already gated them, the probe they used, the fp32 graph a graph-only parity compares with)."""
    out = folder / MODEL_FILE
    info: dict[str, Any] = {}
    module = None
    reference_graph = out  # without a PyTorch model, parity compares with the fp32 graph item by item
    if precision == "fp32" and spec.build_torch is not None:
        from .torch_export import build_module, export_module

        tmp = folder / f".{MODEL_FILE}.tmp-trace"
        try:
            if spec.export_onnx is not None:
                _run_exporter(spec, tmp)
                exporter = dict(spec.extra).get("exporter", "the backbone's own exporter")
            else:
                module = build_module(spec)
                export_module(module, spec, _dummy(spec, pre), tmp)
                exporter = "torch.onnx (TorchScript)"
            info["graph"] = _finish_graph(spec, tmp, out, exporter)
        finally:
            tmp.unlink(missing_ok=True)
        return info, module, None, probe, reference_graph
    if precision == "fp32":
        from .safety import external_data_files

        src = Path(spec.onnx_file)
        data = external_data_files(src)
        for name in data:
            copy_file_atomic(src.parent / name, folder / name)
        copy_file_atomic(src, out)
        info["graph"] = {"source": str(src), "external_data": data}
        return info, None, None, probe, reference_graph
    base = export(spec, "fp32", settings=settings, engine=engine)
    info["graph"] = {"from_fp32": base.fingerprint}
    if precision == "int8":
        from .int8 import build_int8

        quantized, probe, parity = build_int8(spec, base.path, out, pre, probe, items, None, min_cosine)
        info.update(quantized)
        return info, None, parity, probe, base.path
    from .quantize import fp16

    write_bytes_atomic(out, fp16(base.path))
    return info, None, None, probe, base.path


def _durable_sha(path: Path) -> str:
    """The file's sha256, after its data is flushed to the disk: an exporter may leave that to this step
    (the patched graph of a fine-tune does: the fsync then runs beside the parity gate, not before it), and the
    manifest, which marks the export complete, is written after it."""
    from ..store.atomic import fsync_file, sha256_file

    fsync_file(path)
    return sha256_file(path)


def _run_exporter(spec: "BackboneSpec", path: Path) -> None:
    """Let the spec's own exporter write the fp32 graph; its failures become a BackboneError."""
    try:
        spec.export_onnx(path)
    except BackboneError:
        raise
    except Exception as exc:  # noqa: BLE001 - exporters fail in many ways
        raise BackboneError(f"backbone '{spec.name}': exporting to ONNX failed: {type(exc).__name__}: {exc}",
                            hint="see the traceback with --debug; the architecture may not be supported") from exc
    if not path.is_file():
        raise BackboneError(f"backbone '{spec.name}': the exporter wrote no graph", hint="report it to its authors")


def _finish_graph(spec: "BackboneSpec", traced: Path, out: Path, exporter: str) -> dict[str, Any]:
    """Apply the transformer fusions when the spec asks for them; write ``out`` atomically (``traced`` is moved
    there when nothing is fused)."""
    optimizer = dict(spec.extra).get("graph_optimizer")
    if optimizer in ("bert", "bert-layernorm"):  # bert-layernorm: residual Add + LayerNormalization kept apart
        from .quantize import fuse_transformer

        fused = fuse_transformer(traced, skip_layernorm=optimizer == "bert")
        if fused is not None:
            write_bytes_atomic(out, fused)
            return {"exporter": exporter, "optimizer": "onnxruntime.transformers bert fusions"}
    _move_durably(traced, out)
    return {"exporter": exporter, "optimizer": None}


def _move_durably(src: Path, dst: Path) -> None:
    """Rename ``src`` (a file in ``dst``'s folder) over ``dst`` once its bytes are on disk: atomic like a copy, without
    reading and writing the whole graph again (~90 MB for MiniLM)."""
    import os

    from ..store.atomic import FS, fsync_dir

    fd = os.open(src, os.O_RDONLY)
    try:
        FS.fsync(fd)
    finally:
        os.close(fd)
    FS.replace(src, dst)
    fsync_dir(dst.parent)


def _dummy(spec: "BackboneSpec", pre: Any) -> dict[str, "np.ndarray"]:
    """A 2-item batch to trace with."""
    if spec.modality == "text":
        return pre.collate(pre.prepare_many(["hello world", "a slightly longer sentence to trace the exporter"]))
    from .parity import probe_items

    return pre.collate(pre.prepare_many(probe_items(spec)[:2]))


def _opset(path: Path) -> int | None:
    """The graph's default-domain opset, read from the serialised ModelProto's top-level fields: the graph
    itself (field 7, the weights: ~90 MB for MiniLM, 0.1 s to parse) is skipped, not parsed."""
    import mmap

    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            for field, value in _proto_fields(data, 0, len(data)):
                if field == 8:  # opset_import: OperatorSetIdProto {1: domain, 2: version}
                    entry = dict(_proto_fields(data, *value))
                    domain = bytes(data[slice(*entry[1])]).decode() if 1 in entry else ""
                    if domain in ("", "ai.onnx"):
                        return entry.get(2)
            return None
        except (ValueError, IndexError, UnicodeDecodeError):  # not what the scan expects: let onnx parse it
            pass
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _proto_fields(data: Any, start: int, end: int) -> Iterator[tuple[int, Any]]:
    """(field number, value) of a protobuf message's fields in ``data[start:end]``: varints as ints,
    length-delimited fields as their (start, end) span, fixed-width fields skipped."""
    def varint(pos: int) -> tuple[int, int]:
        shift = result = 0
        while True:
            byte = data[pos]
            result |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if byte < 0x80:
                return result, pos

    pos = start
    while pos < end:
        tag, pos = varint(pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = varint(pos)
            yield field, value
        elif wire == 2:
            length, pos = varint(pos)
            yield field, (pos, pos + length)
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {pos}")


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for dist in ("headstart", "torch", "transformers", "onnx", "onnxruntime-gpu", "onnxruntime", "tokenizers"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")
