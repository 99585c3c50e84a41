"""toolkit's own state in the store, under ``.toolkit/``.

Write records and resume markers (:mod:`.records`), leases and lock sets
(:mod:`.leases`), the creation claim (:mod:`.claim`) and the commit log of many
jobs (:mod:`.commitlog`).
"""
