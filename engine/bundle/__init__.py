"""Bundles: a trained model as one ONNX file (in-graph preprocessing + backbone + head) that runs on
onnxruntime alone. ``build_bundle`` (:mod:`.build`) writes one after its parity gate; ``load_bundle``
(:mod:`.loader`) runs one with numpy + onnxruntime (+ onnxruntime-extensions for text).

Nothing is imported here: :mod:`.loader` must stay importable without torch, faiss, sklearn or pyarrow.
"""
