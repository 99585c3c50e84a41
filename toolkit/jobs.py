"""The first name of :mod:`toolkit.commands`, kept: ``toolkit.jobs.copy`` is public.

The module was named for the jobs the command line runs; "jobs" now means the
many jobs that write one dataset (:mod:`toolkit.write.manyjobs`), so it is
:mod:`toolkit.commands`. Code that imports these names from here keeps working.
"""

from __future__ import annotations

from toolkit.commands import copy, demo, demo_dataset, inspect, parse_size

__all__ = ["copy", "demo", "demo_dataset", "inspect", "parse_size"]
