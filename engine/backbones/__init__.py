"""Backbones: specs, ONNX export with a parity gate, and onnxruntime sessions."""

from .spec import BackboneSpec, ImagePreprocessing, NumericPreprocessing, TextPreprocessing

__all__ = ["BackboneSpec", "ImagePreprocessing", "NumericPreprocessing", "TextPreprocessing"]
