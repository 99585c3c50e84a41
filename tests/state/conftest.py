"""A coordination prefix on each store that coordinates: local, memory, and S3 (moto)."""

from __future__ import annotations

import time

import pytest
from zarr.storage import LocalStore, MemoryStore

from toolkit.state.leases import Coordinator


@pytest.fixture(params=["local", "memory", "s3"])
def coord(request, tmp_path, s3):
    if request.param == "local":
        return Coordinator(LocalStore(str(tmp_path / "c")))
    if request.param == "memory":
        return Coordinator(MemoryStore())
    from zarr.storage import FsspecStore

    bucket = f"coord-{time.time_ns() % 10**9}"
    s3.create_bucket(bucket)
    return Coordinator(
        FsspecStore.from_url(f"s3://{bucket}/x", storage_options=s3.storage_options())
    )
