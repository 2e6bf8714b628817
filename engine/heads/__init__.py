"""Heads: scikit-learn style classifiers trained on cached feature vectors."""

from .spec import HeadRef, HeadSpec, parse_head_ref

__all__ = ["HeadRef", "HeadSpec", "parse_head_ref"]
