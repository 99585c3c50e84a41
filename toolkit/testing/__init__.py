"""Test doubles that are real, for toolkit's tests, benchmarks and notebooks.

An S3 server, a fault-injecting HTTP proxy, a fault-injecting zarr store, the
conformance helpers for toolkit's store wrappers, and a discrete-event model of a
cluster sharing one request budget (:mod:`toolkit.testing.ratesim`).

Nothing in the package imports this; tests, benchmarks and notebooks do.
"""

from toolkit.testing.faults import FaultStore
from toolkit.testing.servers import FaultProxy, ProxyCounts, S3Server

__all__ = ["FaultProxy", "FaultStore", "ProxyCounts", "S3Server"]
