"""Test doubles that are real, for toolkit's tests, benchmarks and notebooks.

An S3 server, Azure's Blob Storage emulator (Azurite), a fault-injecting HTTP
proxy, a fault-injecting zarr store, the conformance helpers for toolkit's store
wrappers, and a discrete-event model of a cluster sharing one request budget
(:mod:`toolkit.testing.ratesim`).

The conformance suites of coordination (conditional writes, leases, the creation
claim, the commit log), which every backend's tests subclass, are in
:mod:`toolkit.testing.conformance`; it imports pytest, so it is not imported here.

Nothing in the package imports this; tests, benchmarks and notebooks do.
"""

from toolkit.testing.faults import FaultStore
from toolkit.testing.servers import AzuriteServer, FaultProxy, ProxyCounts, S3Server

__all__ = ["AzuriteServer", "FaultProxy", "FaultStore", "ProxyCounts", "S3Server"]
