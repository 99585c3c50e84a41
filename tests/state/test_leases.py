"""Conditional writes, leases and lock sets on every store that coordinates.

The behaviour is toolkit's conformance suites (``toolkit.testing.conformance``), run
here for memory, local files, S3 (moto) through both clients, and Azure (Azurite).
"""

from __future__ import annotations

import pytest
from coordination_backends import Azure, Local, Memory, S3fs, S3Obstore

from toolkit.errors import CoordinationError
from toolkit.state.leases import Coordinator, supports_atomic_create
from toolkit.testing.conformance import ConditionalStoreTests, LeaseTests


class TestConditionalStoreMemory(Memory, ConditionalStoreTests):
    pass


class TestConditionalStoreLocal(Local, ConditionalStoreTests):
    pass


class TestConditionalStoreS3Obstore(S3Obstore, ConditionalStoreTests):
    pass


class TestConditionalStoreS3fs(S3fs, ConditionalStoreTests):
    pass


class TestConditionalStoreAzure(Azure, ConditionalStoreTests):
    pass


class TestLeaseMemory(Memory, LeaseTests):
    pass


class TestLeaseLocal(Local, LeaseTests):
    pass


class TestLeaseS3Obstore(S3Obstore, LeaseTests):
    pass


class TestLeaseS3fs(S3fs, LeaseTests):
    pass


class TestLeaseAzure(Azure, LeaseTests):
    pass


def test_stores_without_conditional_writes_are_refused():
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url("memory://nothing-atomic")
    assert not supports_atomic_create(store)
    with pytest.raises(CoordinationError, match="atomic conditional write"):
        Coordinator(store)
