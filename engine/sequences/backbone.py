"""A ``headstart pretrain`` folder as a backbone, by folder path or by the name ``pretrain --name`` registers, and
the categorical vocabulary that a backbone carries.

The spec's PyTorch module is the pretrained encoder (``encoder.safetensors``), so the backbone embeds (exported
through the parity gate like any ``build_torch`` backbone), fine-tunes (the finetuner loads the module) and
bundles. Its numeric preprocessing names the folder's ``vocabulary.json``, which the events reader uses when the
command line gives categorical columns without ``--vocabulary``.

Registered names live in ``<home>/backbones/<name>.json`` (``{"folder": "/abs/path"}``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError

REGISTRY = "backbones"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _registry_file(home: Path, name: str) -> Path:
    return Path(home) / REGISTRY / f"{name}.json"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or ":" in name:
        raise ConfigError(f"--name '{name}' is not a backbone name",
                          hint="use letters, digits, '.', '_' and '-' (up to 64, starting with a letter or digit)")
    return name


def register(home: Path, name: str, folder: Path, engine: Any = None) -> Path:
    """Record ``name`` -> ``folder`` under the store's home; a built-in backbone name cannot be taken."""
    from ..store.atomic import write_json_atomic

    check_name(name)
    if engine is not None and engine.catalog.find("backbone", name) is not None:
        raise ConfigError(f"--name '{name}' is already a registered backbone", hint="choose another name")
    path = _registry_file(home, name)
    write_json_atomic(path, {"format": "headstart-local-backbone", "folder": str(Path(folder).resolve())})
    return path


def pretrained_folder(ref: str, home: Path) -> Path | None:
    """The pretrain folder ``ref`` names: a folder holding ``pretrain.json``, or a name registered in ``home``."""
    from .pretrain import SUMMARY

    path = Path(ref).expanduser()
    if (path / SUMMARY).is_file():
        return path.resolve()
    if not _NAME.fullmatch(ref):
        return None
    entry = _registry_file(home, ref)
    if not entry.is_file():
        return None
    try:
        folder = Path(json.loads(entry.read_text())["folder"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"the backbone name '{ref}' has a damaged entry {entry}: {exc}",
                          hint="run headstart pretrain ... --name again, or delete the entry") from None
    if not (folder / SUMMARY).is_file():
        raise ConfigError(f"the backbone name '{ref}' points to {folder}, which holds no finished pretraining run",
                          hint="the folder was moved or deleted: run headstart pretrain ... --name again")
    return folder


def pretrained_spec(ref: str, folder: Path) -> Any:
    """The backbone of a pretrain folder (``name``: ``ref`` when it is a registered name, else the folder)."""
    from ..backbones.spec import BackboneSpec, NumericPreprocessing
    from .encoder import EncoderConfig
    from .pretrain import SUMMARY, VOCABULARY, WEIGHTS, load_encoder

    try:
        summary = json.loads((folder / SUMMARY).read_text())
        config = EncoderConfig.from_json(summary["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{folder / SUMMARY} cannot be read: {exc}",
                          hint="pretrain again into a new folder") from None
    vocabulary = folder / VOCABULARY
    prep = NumericPreprocessing(input_name="x", shape=(None, config.width), dtype="float32", mask_name="mask",
                                vocabulary=str(vocabulary) if vocabulary.is_file() else None)
    name = ref if not (Path(ref).expanduser() / SUMMARY).is_file() else str(folder)
    return BackboneSpec(
        name=name, modality="numeric", source=f"headstart pretrain folder {folder}", preprocessing=prep,
        dim=config.dim, pooling="mean", normalize=False, weights=(str(folder / WEIGHTS),),
        description=f"event-sequence encoder pretrained by headstart pretrain ({summary.get('objective')}, "
                    f"{config.width} values per event)",
        build_torch=lambda: load_encoder(folder)[0])


def backbone_vocabulary(reader_options: Any, backbone: Any, engine: Any) -> Any:
    """``reader_options`` with the backbone's vocabulary when it reads categorical columns without one."""
    events = getattr(reader_options, "events", None)
    if events is None or not events.categorical or events.vocabulary is not None or backbone is None:
        return reader_options
    from ..backbones.resolve import resolve_backbone

    spec = resolve_backbone(backbone, engine)
    vocabulary = getattr(spec.preprocessing, "vocabulary", None)
    if vocabulary is None:
        return reader_options
    return dataclasses.replace(reader_options, events=dataclasses.replace(events, vocabulary=vocabulary))
