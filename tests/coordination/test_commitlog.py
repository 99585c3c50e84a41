"""The group-committed log: one sequence of decisions for many jobs, on every store.

The behaviour is toolkit's conformance suite (``toolkit.testing.conformance``), run
here for memory, local files, S3 (moto) through both clients, and Azure (Azurite).
"""

from __future__ import annotations

from coordination_backends import Azure, Local, Memory, S3fs, S3Obstore

from toolkit.testing.conformance import CommitLogTests


class TestCommitLogMemory(Memory, CommitLogTests):
    pass


class TestCommitLogLocal(Local, CommitLogTests):
    pass


class TestCommitLogS3Obstore(S3Obstore, CommitLogTests):
    pass


class TestCommitLogS3fs(S3fs, CommitLogTests):
    pass


class TestCommitLogAzure(Azure, CommitLogTests):
    pass
