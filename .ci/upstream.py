"""The upstream job: xarray's routed Zarr suite against xarray's and zarr's newest releases.

``./dev upstream`` (CI runs it last, allowed to fail). It asks the package index
(``pip index versions``) for xarray's and zarr's latest releases, bounds or not. When
the installed ones (those toolkit is tested with, within pyproject.toml's bounds) are
the latest, it says so in one line and exits 0: a few seconds. Otherwise it makes
``.venv-upstream`` (kept between runs, gitignored), installs toolkit with its test
extras and then the latest xarray and zarr over the bounds, runs the routed suite
(tests/test_xarray_suite.py: xarray's Zarr and DataTree tests with every write through
toolkit), and reports the counts. All of it within ``--timeout`` seconds (870; CI stops
the job at 900): a run cut short reports what finished. Exit 1 when a test fails or the
time runs out, 2 when the index cannot be asked.

Usage: ``./dev upstream [--force] [--timeout SECONDS] [pytest args]``. ``--force`` runs
the suite even when nothing is newer; pytest arguments replace the default selection.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-upstream"
PACKAGES = ("xarray", "zarr")
#: The routed suite: xarray's Zarr tests (its DataTree ones too) with every write, and
#: the directory suite's reads, through toolkit (the to_zarr methods themselves replaced).
SUITE = ("tests/test_xarray_suite.py",)


def _latest(name: str) -> str:
    """The newest release of ``name`` on the package index (no pre-releases)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(rf"^{re.escape(name)} \(([^)]+)\)", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        reason = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        raise RuntimeError(f"cannot ask the package index for {name}: {reason}")
    return found.group(1)


def _log(message: str) -> None:
    print(f"upstream: {message}", flush=True)


def _run(cmd: list[str], timeout: float | None = None) -> tuple[int | None, str]:
    """``cmd``'s exit code (None: timed out, then killed) and output.

    It runs in its own process group, killed with it on a timeout, and on a
    SIGTERM to this process (an exception here).
    """
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        text=True,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode, out


def _environment(latest: dict[str, str], deadline: float) -> Path:
    """``.venv-upstream`` with toolkit, its test extras, and ``latest`` over the bounds."""
    python = VENV / "bin" / "python"
    pins = [f"{name}=={version}" for name, version in sorted(latest.items())]
    stamp = VENV / ".toolkit-upstream"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + " ".join(pins).encode())
    if python.exists() and stamp.exists() and stamp.read_text() == want.hexdigest():
        return python
    _log(f"making {VENV.name} (toolkit[test], then {' '.join(pins)}; a few minutes)")
    venv.create(VENV, with_pip=True, clear=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    for step in ([*pip, "-e", ".[test]"], [*pip, "--upgrade", *pins]):
        # The second step breaks toolkit's bounds on purpose: pip says so, and installs.
        code, out = _run(step, timeout=max(deadline - time.monotonic(), 1))
        lines = [ln for ln in out.splitlines() if "is ignored: it is neither" not in ln]
        if code != 0:
            print("\n".join(lines[-40:]), file=sys.stderr)
            why = "timed out" if code is None else f"exit {code}"
            raise RuntimeError(f"{' '.join(step[6:])} failed ({why})")
    stamp.write_text(want.hexdigest())
    return python


def _counts(output: str) -> str:
    """The closing line of pytest (``N passed, M failed, ... in Ts``), or the last line."""
    lines = [ln.strip("= ") for ln in output.splitlines() if ln.strip()]
    for line in reversed(lines):
        if re.search(r"\d+ (passed|failed|error|errors|skipped|xfailed|deselected)", line):
            return line
    return lines[-1] if lines else "no output"


def _progress(output: str) -> str:
    """What pytest -q's progress marks say of a run stopped early."""
    marks = "".join(
        m.group(1) for m in re.finditer(r"^([.FEsxX]+)(?:\s+\[\s*\d+%\])?$", output, re.M)
    )
    kinds = {
        ".": "passed",
        "F": "failed",
        "E": "errors",
        "s": "skipped",
        "x": "xfailed",
        "X": "xpassed",
    }
    counts = [f"{marks.count(k)} {name}" for k, name in kinds.items() if marks.count(k)]
    return ", ".join(counts) or "no test finished"


def main() -> int:
    """Check the index; when xarray or zarr has a newer release, run the suite with it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="run even if nothing is newer")
    parser.add_argument(
        "--timeout", type=float, default=870, help="seconds for the whole job (install and run)"
    )
    args, pytest_args = parser.parse_known_args()
    deadline = time.monotonic() + args.timeout
    # A TERM (CI's `timeout`) ends this process as an exception: children are killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    installed = {name: importlib.metadata.version(name) for name in PACKAGES}
    try:
        with concurrent.futures.ThreadPoolExecutor(len(PACKAGES)) as pool:
            latest = dict(zip(PACKAGES, pool.map(_latest, PACKAGES), strict=True))
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        _log(f"{e}: the newest releases were not checked")
        return 2
    newer = {n: v for n, v in latest.items() if Version(v) > Version(installed[n])}
    tested = ", ".join(f"{n} {installed[n]}" for n in PACKAGES)
    if not newer and not args.force:
        _log(f"the tested {tested} are the latest releases: nothing to run")
        return 0
    against = ", ".join(f"{n} {latest[n]}" for n in PACKAGES)
    what = ", ".join(f"{n} {v}" for n, v in newer.items())
    _log(f"newer than the tested {tested}: {what}" if newer else f"--force: {tested}")

    try:
        python = _environment(latest, deadline)
    except RuntimeError as e:
        _log(f"FAILED: could not install {against}: {e}")
        return 1
    selection = pytest_args or list(SUITE)
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection]
    left = deadline - time.monotonic()
    _log(f"running the routed xarray suite against {against} (at most {left:.0f} s)")
    start = time.monotonic()
    code, out = _run(cmd, timeout=max(left, 1))
    took = time.monotonic() - start
    if code is None:
        _log(f"FAILED: unfinished after {took:.0f} s against {against}: {_progress(out)}")
        return 1
    if code != 0:
        failed = [ln for ln in out.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        print("\n".join(failed[:100]) or "\n".join(out.splitlines()[-40:]), flush=True)
    verdict = "passed" if code == 0 else "FAILED"
    _log(f"{verdict} against {against}: {_counts(out)} ({took:.0f} s)")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
