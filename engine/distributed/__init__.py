"""The embedding pipeline on an existing distributed engine (Ray Data); needs ``pip install headstart[ray]``.

Nothing here is imported by the local engine; ``ray`` is imported only inside functions.
"""
