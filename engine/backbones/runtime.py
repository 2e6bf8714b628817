"""The onnxruntime session for an exported backbone, and the truth about which provider it got.

Before onnxruntime reads a byte, :class:`Encoder` checks the sha256 of every cached
file against the manifest and refuses external-data paths that are absolute, leave
the model folder or are links. After the session is created it reads
``session.get_providers()``: ``device="cuda"`` that ended on the CPU is a
:class:`ProviderError` (onnxruntime-gpu without CUDA libraries only logs this).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError, ProviderError, UnsafeModelError
from .safety import external_data_files, verify_files

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .export import ExportedBackbone

Device = Literal["auto", "cpu", "cuda"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# onnxruntime's CPU SkipLayerNormalization kernel ran 6x slower than Add + LayerNormalization on
# (32, 9, 384) here (onnxruntime 1.31); keeping them apart made MiniLM fp32 +17% and int8 +28% texts/s.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


class Encoder:
    """Runs collated batches through the cached ONNX graph: ``.run(inputs) -> (B, dim) float32``."""

    def __init__(self, exported: "ExportedBackbone", device: Device = "auto", threads: int | None = None,
                 provider_options: dict[str, Any] | None = None, spin: bool = True) -> None:
        """``spin=False`` when other processes need the cores between runs (image decode workers)."""
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown device {device!r}", hint="use auto, cpu or cuda")
        precision = exported.precision
        if device == "cuda" and precision == "int8":
            raise ConfigError(f"backbone '{exported.name}' int8 runs on the CPU provider only",
                              hint="use --device cpu, or the fp16/fp32 export on CUDA")
        folder = exported.path.parent
        files = dict(exported.manifest.get("files", {}))
        verify_files(folder, files)
        unlisted = [f for f in external_data_files(exported.path) if f not in files]
        if unlisted:
            raise UnsafeModelError(f"{exported.path} uses external data {unlisted} not covered by its manifest",
                                   hint=f"delete {folder} and export again")
        self.exported = exported
        self.dim = int(exported.manifest.get("dim", exported.spec.dim))
        self._session = self._create(device if precision != "int8" else "cpu", threads, provider_options, spin)
        self.providers: list[str] = self._session.get_providers()
        self.device = "cuda" if self.providers and self.providers[0] == CUDA else "cpu"
        if device == "cuda" and self.device != "cuda":
            raise ProviderError(
                f"asked for CUDA for backbone '{exported.name}' but onnxruntime gave {self.providers}",
                hint="install onnxruntime-gpu (and uninstall the CPU `onnxruntime` wheel: both share one folder) with "
                     "CUDA/cuDNN libraries matching it, check `nvidia-smi`, or use --device cpu")
        if precision == "fp16" and self.device != "cuda":
            raise ProviderError(f"backbone '{exported.name}' fp16 export needs the CUDA provider; got {self.providers}",
                                hint="use the fp32 or int8 export on the CPU")
        self._output = [self._session.get_outputs()[0].name]
        self._input_names = [i.name for i in self._session.get_inputs()]

    @staticmethod
    def _available() -> list[str]:
        import onnxruntime as ort

        return ort.get_available_providers()

    def _create(self, device: str, threads: int | None, provider_options: dict[str, Any] | None, spin: bool):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        if not spin:  # idle threads sleep instead of spinning (keeps the cores for decode workers)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        want_cuda = device == "cuda" or (device == "auto" and CUDA in self._available() and _cuda_driver_loadable())
        # onnxruntime-gpu without CUDA libraries logs an error and falls back; we check providers ourselves
        opts.log_severity_level = 3 if device != "cuda" else 2
        providers: list[Any] = [CPU]
        if want_cuda:
            providers = [(CUDA, dict(provider_options or {})), CPU]
        elif provider_options:
            providers = [(CPU, dict(provider_options))]
        if want_cuda and hasattr(ort, "preload_dlls"):
            import contextlib
            import io

            # CUDA/cuDNN from pip packages or torch; absence shows up as a CPU-only session below
            with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                ort.preload_dlls()
        if device != "auto" or not want_cuda:
            return self._session_for(opts, providers)
        # auto on a machine without CUDA libraries: onnxruntime logs a provider-load error on its default
        # logger and falls back to CPU; that is expected here, so keep it quiet (providers are checked after).
        ort.set_default_logger_severity(4)
        try:
            session = self._session_for(opts, providers)
        finally:
            ort.set_default_logger_severity(2)
        if CUDA in session.get_providers():
            return session
        return self._session_for(opts, [p for p in providers if p == CPU])  # with the CPU graph settings

    def _session_for(self, opts: Any, providers: list[Any]):
        import onnxruntime as ort

        on_cpu = all((p[0] if isinstance(p, tuple) else p) == CPU for p in providers)
        return ort.InferenceSession(str(self.exported.path), sess_options=opts, providers=providers,
                                    disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS) if on_cpu else [])

    @property
    def input_names(self) -> list[str]:
        return list(self._input_names)

    def run(self, inputs: dict[str, "np.ndarray"]) -> "np.ndarray":
        """Embed one collated batch; returns float32 (B, dim)."""
        if self.device == "cuda":
            binding = self._session.io_binding()
            for name, arr in inputs.items():
                binding.bind_cpu_input(name, arr)
            binding.bind_output(self._output[0], "cuda")
            self._session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self._session.run(self._output, inputs)[0]
        return out if out.dtype == "float32" else out.astype("float32")


def _cuda_driver_loadable() -> bool:
    """Whether the NVIDIA driver library loads: without it the CUDA provider cannot run, so ``auto``
    goes straight to the CPU session (onnxruntime-gpu lists CUDA as available either way)."""
    import ctypes
    import sys

    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True
