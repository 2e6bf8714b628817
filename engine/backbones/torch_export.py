"""PyTorch -> ONNX: trace the spec's module with dynamic batch (and sequence) axes, and run it as reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import BackboneError
from .fingerprint import OPSET

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .spec import BackboneSpec


def build_module(spec: "BackboneSpec") -> Any:
    """Call the spec's ``build_torch`` and put the module in eval mode on the CPU."""
    try:
        module = spec.build_torch()
    except Exception as exc:  # noqa: BLE001 - missing weights, bad config, ...
        raise BackboneError(f"backbone '{spec.name}': building the PyTorch model failed: {type(exc).__name__}: {exc}",
                            hint=f"check the backbone's source ({spec.source})") from exc
    return module.eval().float().cpu()


class TorchBuilder:
    """A spec's ``build_torch`` with optional twins: ``builder()`` is the reference module (the one exports
    trace), ``builder.plain()`` a module computing the same in plain PyTorch, cheaper to import and train, and
    ``builder.numpy()`` a model computing the same on numpy arrays (no torch import at all; a finetuner
    trains it through its own backward pass). Each twin is None when the backbone's folder is not covered."""

    def __init__(self, reference: Callable[[], Any], plain: Callable[[], Any | None],
                 numpy: Callable[[], Any | None] | None = None) -> None:
        self.reference, self._plain, self._numpy = reference, plain, numpy

    def __call__(self) -> Any:
        return self.reference()

    def plain(self) -> Any | None:
        return self._plain()

    def numpy(self) -> Any | None:
        return self._numpy() if self._numpy is not None else None


def trainable_module(spec: "BackboneSpec") -> Any:
    """The spec's PyTorch module for training, eval mode, fp32, CPU: the plain twin when its ``build_torch`` (a
    :class:`TorchBuilder`) offers one for this folder, else :func:`build_module`."""
    plain = getattr(spec.build_torch, "plain", None)
    module = plain() if plain is not None else None
    if module is None:
        return build_module(spec)
    return module.eval().float().cpu()


def numpy_twin(spec: "BackboneSpec") -> Any | None:
    """The spec's numpy twin (``TorchBuilder.numpy``: ``framework == "numpy"``, called with a collated batch's
    arrays as keywords, returns the embeddings), or None when it offers none for this folder."""
    twin = getattr(spec.build_torch, "numpy", None)
    return twin() if twin is not None else None


def dynamic_axes(spec: "BackboneSpec", inputs: dict[str, "np.ndarray"]) -> dict[str, dict[int, str]]:
    """Batch axis everywhere; sequence axis for text; declared dynamic axes for numeric items."""
    axes: dict[str, dict[int, str]] = {}
    for name, arr in inputs.items():
        axes[name] = {0: "batch"}
        if spec.modality == "text" or (spec.modality == "numeric" and name == spec.preprocessing.mask_name):
            axes[name][1] = "sequence"
        elif spec.modality == "numeric":
            for i, s in enumerate(spec.preprocessing.shape):
                if s is None:
                    axes[name][i + 1] = f"axis{i + 1}"
    axes[spec.output_name] = {0: "batch"}
    return axes


def export_module(module: Any, spec: "BackboneSpec", dummy: dict[str, "np.ndarray"], out_path: Path) -> None:
    """Trace ``module`` with keyword inputs ``dummy`` and write an ONNX graph to ``out_path``."""
    import warnings

    import torch

    names = list(dummy)
    args = tuple(torch.from_numpy(dummy[n]) for n in names)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter chatter (constant folding notes, deprecations)
            torch.onnx.export(module, args, str(out_path), input_names=names, output_names=[spec.output_name],
                              dynamic_axes=dynamic_axes(spec, dummy), opset_version=OPSET, dynamo=False,
                              do_constant_folding=True, external_data=False)
    except Exception as exc:  # noqa: BLE001 - exporter failures are many and varied
        raise BackboneError(f"backbone '{spec.name}': torch.onnx export failed: {type(exc).__name__}: {exc}",
                            hint="the model uses an op the ONNX exporter cannot trace; see the traceback with --debug") from exc


def run_module(module: Any, batches: list[dict[str, "np.ndarray"]]) -> "np.ndarray":
    """The module's float32 outputs for each collated batch, concatenated."""
    import numpy as np
    import torch

    outs = []
    with torch.inference_mode():
        for batch in batches:
            out = module(**{k: torch.from_numpy(v) for k, v in batch.items()})
            outs.append(out.float().cpu().numpy())
    return np.concatenate(outs)
