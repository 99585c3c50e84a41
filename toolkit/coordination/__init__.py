"""How jobs coordinate through the store: toolkit's own objects under ``.toolkit/``.

Leases and lock sets (:mod:`.leases`), the creation claim (:mod:`.claim`), the
commit log of many jobs (:mod:`.commitlog`) and where their rows go
(:mod:`.rows`); a write's record and resume markers (:mod:`.records`) and the
checksum manifest (:mod:`.manifest`), by which a rerun and ``verify`` know
what a job wrote.
"""
