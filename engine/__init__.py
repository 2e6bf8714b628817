"""The headstart engine: plugin manager, backbones, feature store, embedding pipeline, heads, training.

Installed as ``headstart.engine``. The public Python API is the top-level package (``import headstart``);
plugin authors import from ``headstart.sdk``. Nothing here imports from ``headstart.plugins``.
"""
