"""Persistent caches: the export cache and the feature store, written atomically.

Feature store modules: ``features`` (FeatureStore, StoreWriter, ErrorRecord, VerifyReport),
``shards`` (Arrow IPC files), ``manifest``, ``lock`` (flock), ``index`` / ``indexing`` (FAISS flat and
on-disk IVF), ``verify``, ``catalog`` (list_stores, gc). See docs/store.md.
"""
