"""Conditional writes, leases and lock sets on every store that coordinates.

The behaviour is toolkit's conformance suites (``toolkit.testing.conformance``), run
here for memory, local files, S3 (moto) through both clients, and Azure (Azurite).
"""

from __future__ import annotations

import pytest
from coordination_backends import Azure, Local, Memory, S3fs, S3Obstore

from toolkit.coordination.leases import Coordinator, supports_atomic_create
from toolkit.errors import CoordinationError
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


def test_azures_refusals_are_read_as_refusals(azurite):
    """Azure's answers to conditional PUTs, from Azurite through obstore.

    409 BlobAlreadyExists (a create of a key that is there: S3 says 412) and 412
    ConditionNotMet (a replace at another version) are "exists" to both readers of
    conditional answers: by obstore's exception type, and by the status and code alone
    (the same message in an error type obstore did not map), never a failure.
    """
    import obstore
    from obstore.exceptions import GenericError

    from toolkit.io.classify import http_status
    from toolkit.io.clients import _conditional_answer
    from toolkit.io.conditional import _answer
    from toolkit.io.stores import resolve_store, unwrap

    opts = azurite.storage_options()
    store = unwrap(resolve_store("az://data/answers", storage_options=opts)).store
    obstore.put(store, "k", b"1", mode="create")
    refusals = []
    for mode in ("create", {"e_tag": '"0x8D0000000000000"'}):
        with pytest.raises(Exception) as err:
            obstore.put(store, "k", b"2", mode=mode)
        refusals.append(err.value)
    assert [http_status(e) for e in refusals] == [
        (409, "BlobAlreadyExists"),
        (412, "ConditionNotMet"),
    ]
    for e in refusals:
        untyped = GenericError(str(e))
        for answer in (_answer, _conditional_answer):
            assert answer(e) == "exists" and answer(untyped) == "exists", (answer, e)
    assert obstore.get(store, "k").bytes() == b"1"
