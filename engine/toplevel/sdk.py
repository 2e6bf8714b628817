"""``headstart.sdk``: everything a plugin needs, and nothing else.

A plugin imports only from here (headstart's own built-in plugins do, and a test enforces it), so this
module is the stable surface between headstart and its plugins::

    from headstart.sdk import Head, HeadSpec, hookimpl

Stability: the names in ``__all__`` keep their meaning within a major version; new optional fields and new
names may appear in minor versions. Everything under ``headstart.engine`` is internal and may change in any
release. Importing this module is cheap (numpy at most): heavy libraries load inside the functions that need
them.
"""

from __future__ import annotations

# hooks
from headstart.engine.hookspecs import hookimpl
# errors a plugin raises (messages say what happened, to which item, and what to do next: ``hint=``)
from headstart.engine.errors import (BackboneError, ConfigError, DataError, FinetuneError, HeadError,
                                     HeadstartError, ItemError, NotFittedError, ReaderError, SchemaError)
# backbones
from headstart.engine.backbones.spec import (BackboneSpec, ImagePreprocessing, Int8Recipe, NumericPreprocessing,
                                             TextPreprocessing)
from headstart.engine.backbones.resolve import resolve_backbone
from headstart.engine.backbones.preprocess import make_preprocessor
from headstart.engine.backbones.torch_export import TorchBuilder, build_module, numpy_twin, trainable_module
from headstart.engine.backbones.export import export as export_backbone
from headstart.engine.backbones.torch_modules import image_encoder, text_encoder, vision_transformer_encoder
from headstart.engine.backbones.graph_pooling import append_pooling
# heads
from headstart.engine.heads.base import Head, class_weights, resolve_device
from headstart.engine.heads.constraints import Interval, InvalidParameterError, Options
from headstart.engine.blas_threads import one_blas_thread
from headstart.engine.torch_threads import one_torch_thread
from headstart.engine.heads.spec import HeadSpec
from headstart.engine.heads.features import ArrayMatrix, FeatureMatrix
from headstart.engine.train.splits import stratified_folds, stratified_split
from headstart.engine.train.metrics import classification_metrics
# readers
from headstart.engine.embed.items import (Item, ItemBatch, ReaderOptions, ReaderSpec, RowRefs, content_key, failed_key,
                                          row_keys, text_keys)
from headstart.engine.sequences.options import EventOptions, Vocabulary
from headstart.engine.sequences.tables import record_batches as event_record_batches, table_schema as event_table_schema
from headstart.engine.sequences.backbone import pretrained_folder, pretrained_spec
# fine-tuners
from headstart.engine.train.finetune_spec import FinetunerSpec
from headstart.engine.train.finetune import (UNFREEZE_ALL_BUT_STEM, UNFREEZE_AUTO, FinetuneOutcome, FinetuneRequest,
                                             first_trained_block, unfreeze_blocks)
# small helpers plugins share with the engine
from headstart.engine.registry import did_you_mean
from headstart.engine.safepaths import check_regular_file, confined_file, read_confined
from headstart.engine.store.atomic import write_bytes_atomic, write_json_atomic, write_patched_copy_atomic
# conformance kits and pause points (HEADSTART_TEST_PAUSE_AT), for a plugin's own tests
from headstart.engine.faultpoints import pause_point
from headstart.engine.testing.conformance import check_backbone, check_head, check_reader, conformance_data

__all__ = [
    "hookimpl",
    "HeadstartError", "ConfigError", "SchemaError", "ReaderError", "ItemError", "BackboneError", "HeadError",
    "NotFittedError", "DataError", "FinetuneError",
    "BackboneSpec", "TextPreprocessing", "ImagePreprocessing", "NumericPreprocessing", "Int8Recipe",
    "resolve_backbone", "make_preprocessor", "build_module", "TorchBuilder", "trainable_module", "numpy_twin",
    "export_backbone",
    "text_encoder", "image_encoder",
    "vision_transformer_encoder", "append_pooling",
    "Head", "HeadSpec", "Interval", "Options", "InvalidParameterError", "FeatureMatrix", "ArrayMatrix", "class_weights",
    "resolve_device", "one_torch_thread", "one_blas_thread", "stratified_split", "stratified_folds", "classification_metrics",
    "Item", "ReaderOptions", "ReaderSpec", "content_key",
    "ItemBatch", "RowRefs", "failed_key", "row_keys", "text_keys",
    "EventOptions", "Vocabulary", "event_record_batches", "event_table_schema", "pretrained_folder", "pretrained_spec",
    "FinetunerSpec", "FinetuneRequest", "FinetuneOutcome", "unfreeze_blocks", "first_trained_block",
    "UNFREEZE_ALL_BUT_STEM", "UNFREEZE_AUTO",
    "did_you_mean", "write_bytes_atomic", "write_json_atomic", "write_patched_copy_atomic", "confined_file", "read_confined", "check_regular_file",
    "check_head", "check_reader", "check_backbone", "conformance_data", "pause_point",
]
