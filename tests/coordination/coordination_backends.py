"""The backends toolkit coordinates through, as mixins for the conformance suites.

Each mixin gives ``store_factory`` (see :mod:`toolkit.testing.conformance`): memory
and local files need nothing installed; S3 runs on moto's server (the session's
``s3`` fixture) through obstore or s3fs, Azure Blob Storage on Azurite (the
session's ``azurite`` fixture) through obstore, and each skips without them (a
failure under ``TOOLKIT_REQUIRE_EXTRAS=1``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from zarr.abc.store import Store
from zarr.storage import LocalStore, MemoryStore


class Memory:
    @pytest.fixture
    def store_factory(self) -> Callable[[], Store]:
        store = MemoryStore()  # one object: every job of the process shares it
        return lambda: store


class Local:
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Callable[[], Store]:
        root = str(tmp_path / "store")
        return lambda: LocalStore(root)


class _S3:
    client = ""

    @pytest.fixture
    def store_factory(self, request: pytest.FixtureRequest) -> Callable[[], Store]:
        if self.client == "obstore":
            pytest.importorskip("obstore")
        s3 = request.getfixturevalue("s3")  # moto's server: skips without moto or s3fs
        from toolkit.io.stores import resolve_store

        bucket = f"coord-{uuid.uuid4().hex[:16]}"
        s3.create_bucket(bucket)
        options = s3.storage_options(client=self.client)
        return lambda: resolve_store(f"s3://{bucket}/x", storage_options=options)


class S3Obstore(_S3):
    client = "obstore"


class S3fs(_S3):
    client = "s3fs"


class Azure:
    """Azure Blob Storage (Azurite) through obstore: a container of its own per test."""

    @pytest.fixture
    def store_factory(self, request: pytest.FixtureRequest) -> Callable[[], Store]:
        az = request.getfixturevalue("azurite")  # skips without obstore or Azurite
        from toolkit.io.stores import resolve_store

        container = f"coord-{uuid.uuid4().hex[:16]}"
        az.create_container(container)
        options = az.storage_options()
        return lambda: resolve_store(f"az://{container}/x", storage_options=options)
