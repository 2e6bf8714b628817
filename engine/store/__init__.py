"""Persistent caches: the export cache and the feature store, written atomically."""
