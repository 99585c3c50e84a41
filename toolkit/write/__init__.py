"""Writing datasets.

Plan (:mod:`.plan`), graph (:mod:`.graph`), execute (:mod:`.execute`), many jobs on
one dataset (:mod:`.manyjobs`) and Icechunk transactions (:mod:`.icechunk`); the
layout a copy or an ingest gives new variables (:mod:`.layout`).
"""
