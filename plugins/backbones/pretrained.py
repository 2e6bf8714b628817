"""Backbones made by ``headstart pretrain``: ``-b NAME`` (registered with ``pretrain --name NAME``) or
``-b FOLDER`` (a folder holding ``pretrain.json``). See :mod:`headstart.engine.sequences.backbone`."""

from __future__ import annotations

from headstart.sdk import hookimpl, pretrained_folder, pretrained_spec


@hookimpl
def resolve_backbone(ref, engine):
    if not isinstance(ref, str) or ":" in ref.split("/", 1)[0]:  # hf:, onnx:, finetuned: ... are not ours
        return None
    folder = pretrained_folder(ref, engine.settings.home)
    return pretrained_spec(ref, folder) if folder is not None else None
