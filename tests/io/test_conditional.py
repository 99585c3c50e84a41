"""Conditional writes on a local directory (``toolkit.io.conditional``)."""

from __future__ import annotations

import shutil

from zarr.core.sync import sync
from zarr.storage import LocalStore

from toolkit.io.conditional import conditional_store


def test_a_replace_in_a_deleted_store_makes_no_directory(tmp_path):
    """A lease renewed or released after its store was deleted must not bring it back.

    (A deferred write's claim watcher released its lease while the test's temporary
    store was being removed: ``rmtree`` failed with "Directory not empty: .toolkit".)
    """
    root = tmp_path / "s.zarr"
    cas = conditional_store(LocalStore(str(root)))
    key = ".toolkit/coord/leases/create.json"
    version = sync(cas.create(key, b'{"state": "held"}'))
    assert version is not None
    renewed = sync(cas.replace(key, b'{"state": "held", "n": 2}', version))
    assert renewed is not None
    shutil.rmtree(root)
    assert sync(cas.replace(key, b'{"state": "released"}', renewed)) is None
    assert not root.exists()
