"""Event sequences: reading an event table as one item per entity or per event-with-history.

:mod:`.options` holds what a reader needs to know (:class:`EventOptions`, window parsing, the categorical
vocabulary). The readers themselves are the built-in CSV/JSONL/Parquet readers (plugins/readers/events.py).
"""
