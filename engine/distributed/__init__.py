"""The embedding job on a Ray cluster, the workers reading, encoding and writing shards; needs ``pip install headstart[ray]``.

Nothing here is imported by the local engine; ``ray`` is imported only inside functions.
"""
