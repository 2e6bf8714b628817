"""One exception hierarchy for everything headstart raises on purpose.

Every error carries a ``hint``: what the user should do next. The CLI prints
``error: <message>`` and ``hint: <hint>`` on one line each, without a traceback
unless ``--debug`` is given.
"""

from __future__ import annotations


class HeadstartError(Exception):
    """Base class of every error headstart raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details  # extra machine-readable context (``--json`` prints it with the error)

    def as_dict(self) -> dict:
        """What ``--json`` prints on a failure: error class, message, hint, exit code (and details)."""
        data = {"error": type(self).__name__, "message": self.message, "hint": self.hint, "exit_code": self.exit_code}
        if self.details:
            data.update(self.details)
        return data

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class ConfigError(HeadstartError):
    """A setting, option or argument is invalid."""

    exit_code = 2


class UnknownNameError(ConfigError):
    """A backbone, head, reader or finetuner name is not registered."""


class PluginError(HeadstartError):
    """A plugin failed to load or raised inside a hook."""


class PluginLoadError(PluginError):
    """A plugin could not be loaded (import error, bad entry point, bad hook)."""


class SchemaError(HeadstartError):
    """A data source lacks a column, has an unusable label column, or is malformed."""


class ReaderError(HeadstartError):
    """A source could not be read at all (as opposed to one bad item)."""


class ItemError(HeadstartError):
    """One item could not be processed; recorded per item, not fatal to a job."""


class BackboneError(HeadstartError):
    """A backbone could not be built, exported or loaded."""


class ExportParityError(BackboneError):
    """The exported ONNX graph does not reproduce the PyTorch model within tolerance."""


class BundleError(HeadstartError):
    """A model cannot be bundled into one ONNX file (unsupported head, tokenizer or backbone)."""


class IntegrityError(HeadstartError):
    """A cached file does not match its manifest (edited, truncated or replaced)."""


class UnsafeModelError(IntegrityError):
    """A model file points outside its folder or uses an unsafe format."""


class ProviderError(HeadstartError):
    """onnxruntime did not give the execution provider that was asked for."""


class StoreError(HeadstartError):
    """The feature store is damaged, locked, or asked for something inconsistent."""


class StoreLockedError(StoreError):
    """Another process holds the store's write lock."""


class StoreReadOnlyError(StoreError):
    """The store (or HEADSTART_HOME) is on a read-only mount or not writable, and the work needs a write."""


class StoreDamagedError(StoreError):
    """A shard or index file does not match what the manifest recorded when it was written."""


class DimensionMismatchError(StoreError):
    """Vectors of another dimension or another backbone fingerprint were offered."""


class HeadError(HeadstartError):
    """A head could not be fitted, loaded or used."""


class NotFittedError(HeadError, ValueError):
    """A head was used before ``fit``."""


class DataError(HeadError):
    """Training or evaluation data is unusable (NaN features, one class, ...)."""


class UntrustedModelError(HeadError):
    """A model file needs code execution (pickle) and was not explicitly trusted."""


class FinetuneError(HeadstartError):
    """Fine-tuning failed or cannot start."""


class DistributedError(HeadstartError):
    """A distributed engine (Ray) could not be reached, or a job on it failed."""


__all__ = [name for name in dir() if name.endswith("Error")]
