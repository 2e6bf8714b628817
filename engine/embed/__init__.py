"""Embedding: readers produce items, the pipeline turns them into cached vectors."""

from .items import Item, ReaderOptions, ReaderSpec, content_key

__all__ = ["Item", "ReaderOptions", "ReaderSpec", "content_key"]
