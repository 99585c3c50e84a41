"""Statistics in one pass over a dataset's chunks.

Mergeable aggregations (:mod:`.aggregations`, with numba or numpy kernels) and the
tree reduction over the chunks (:mod:`.compute`).
"""
