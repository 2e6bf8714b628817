"""Fine-tuned backbones as specs: ``finetuned:<sha16>`` -> the base spec with new weights and a new identity.

Weights live content-addressed under ``<home>/finetuned/<sha16>/``: ``backbone.safetensors``
(the full state dict of the base spec's PyTorch module, or with ``"delta": true`` in the metadata only
the tensors the fine-tune changed: the rest are the base backbone's own) and ``finetuned.json`` (base
backbone ref, sha256), written last: a folder without it does not exist. The spec keeps the base's
preprocessing, pooling and output; its ``weights`` add the safetensors file (hashed into the
fingerprint) and ``extra`` adds ``("finetuned", sha256)``. ``build_torch`` builds the base
module and loads the fine-tuned weights (strict: every tensor, or for a delta every stored one, must fit). When ``finetuned.json`` holds a ``graph_patch`` plan
(graph_patch.py), the ONNX graph is the base export with the tuned weights written into its
initializers (already fused: no tracing, no fusion pass); otherwise the tuned module is traced. Resolving never imports torch, so a
fine-tuned model predicts from its cached export on onnxruntime alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from headstart.sdk import BackboneError, ConfigError

PREFIX = "finetuned:"
WEIGHTS = "backbone.safetensors"
META = "finetuned.json"


def folder_for(root: Path, sha: str) -> Path:
    return root / sha[:16]


def write_finetuned(root: Path, base: str, state: dict[str, Any], info: dict[str, Any],
                    delta: bool = False) -> tuple[str, list[Path]]:
    """Save ``state`` (a state dict of torch tensors or numpy arrays, or with ``delta`` only the changed tensors
    of one) for base backbone ``base``; return (ref, files)."""
    import numpy as np

    from headstart.sdk import write_bytes_atomic, write_json_atomic

    if all(isinstance(v, np.ndarray) for v in state.values()):
        from safetensors.numpy import save

        tensors = {k: np.asarray(v, order="C") for k, v in state.items()}
    else:
        from safetensors.torch import save

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}  # save() copies them into bytes
    # one metadata key: safetensors writes its metadata map in a per-process random order, so two keys would
    # give the same weights different bytes, and the content address (sha256 of the bytes) would not be stable
    data = save(tensors, metadata={"headstart": json.dumps({"base": base, "delta": delta}, sort_keys=True)})
    sha = hashlib.sha256(data).hexdigest()
    folder = folder_for(root, sha)
    write_bytes_atomic(folder / WEIGHTS, data)
    write_json_atomic(folder / META, {"base": base, "sha256": sha, **({"delta": True} if delta else {}), **info})
    return f"{PREFIX}{sha[:16]}", [folder / WEIGHTS, folder / META]


def _build(base: Any, weights: str, delta: bool = False, plain: bool = False) -> Any:
    """The tuned module; with ``plain``, the base's plain-PyTorch twin where it offers one (the module the
    contrastive finetuner trained: the parity reference of a patched graph), else the base's own module (the
    one a traced export is traced from)."""
    from safetensors.torch import load_file

    from headstart.sdk import build_module, trainable_module

    module = trainable_module(base) if plain else build_module(base)
    if not delta:
        module.load_state_dict(load_file(weights), strict=True)
        return module.eval()
    tuned = load_file(weights)
    own = module.state_dict()
    wrong = sorted(k for k, v in tuned.items() if k not in own or own[k].shape != v.shape)
    if wrong:
        raise BackboneError(f"fine-tuned weights {weights}: {len(wrong)} tensors do not fit '{base.name}' "
                            f"(first: {wrong[0]})", hint="the base backbone changed since the fine-tune; fine-tune again")
    module.load_state_dict(tuned, strict=False)
    return module.eval()


def finetuned_spec(ref: str, engine: Any) -> Any:
    """The spec of a fine-tuned backbone stored under ``<home>/finetuned/``."""
    from headstart.sdk import resolve_backbone

    sha = ref[len(PREFIX):]
    root = engine.settings.home / "finetuned"
    folder = folder_for(root, sha)
    if len(sha) != 16 or not (folder / META).is_file():
        raise ConfigError(f"fine-tuned backbone '{ref}' is not in {root}",
                          hint=f"copy the model folder's backbone/ files into {folder}, or fine-tune again")
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as exc:
        raise BackboneError(f"cannot read {folder / META}: {exc}", hint="copy the fine-tuned backbone again") from None
    if not meta.get("sha256", "").startswith(sha):
        raise BackboneError(f"{folder / META} describes weights {meta.get('sha256', '?')[:16]}, not {sha}",
                            hint="copy the fine-tuned backbone again")
    base = resolve_backbone(meta["base"], engine)
    if base.build_torch is None:
        raise BackboneError(f"fine-tuned backbone '{ref}': its base '{base.name}' has no PyTorch model",
                            hint="fine-tuning needs a backbone with build_torch")
    weights = str(folder / WEIGHTS)
    patch = meta.get("graph_patch")
    exporter: dict[str, Any] = {"export_onnx": None}  # traced with torch.onnx: the base's exporter knows its weights only
    extra: tuple = ()
    if patch:
        from .graph_patch import export_patched

        exporter = {"export_onnx": lambda path: export_patched(base, patch, weights, Path(path))}
        extra = (("exporter", "the base export's graph, tuned initializers"), ("graph_optimizer", None))
    return dataclasses.replace(
        base, name=ref, source=f"{base.name} fine-tuned ({weights})",
        description=f"{base.name} fine-tuned end to end ({meta.get('head', 'head')}, {meta.get('created', '')})",
        weights=(*base.weights, weights), aliases=(), default=False,
        build_torch=lambda: _build(base, weights, bool(meta.get("delta")), plain=bool(patch)),
        extra=(*base.extra, *extra, ("finetuned", meta["sha256"])), **exporter)
