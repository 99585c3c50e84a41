from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from hypothesis import HealthCheck, settings
from zarr.storage import LocalStore, MemoryStore

# Hypothesis: bounded, deterministic in CI.
settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def snapshot(store: object) -> dict[str, str]:
    """Every key of a store and a hash of its bytes (directory or memory store)."""
    if isinstance(store, str | Path):
        root = Path(store)
        if not root.exists():
            return {}
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }
    if isinstance(store, MemoryStore):
        return {k: hashlib.sha256(v.to_bytes()).hexdigest() for k, v in store._store_dict.items()}
    if isinstance(store, LocalStore):
        return snapshot(store.root)
    raise TypeError(type(store))


def make_dataset(
    nt: int = 50,
    ny: int = 12,
    nx: int = 10,
    chunks: dict[str, int] | None = None,
    seed: int = 0,
    t0: str = "2000-01-01",
) -> xr.Dataset:
    """Two float variables and one int variable, with NaNs, datetime coordinate."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((nt, ny, nx)).astype("f4")
    a[rng.random(a.shape) < 0.1] = np.nan
    b = rng.standard_normal((nt, ny)).astype("f8")
    c = rng.integers(-1000, 1000, (nt, nx)).astype("i4")
    ds = xr.Dataset(
        {
            "a": (("time", "y", "x"), a, {"units": "K"}),
            "b": (("time", "y"), b),
            "c": (("time", "x"), c),
        },
        coords={
            "time": pd.date_range(t0, periods=nt, freq="D"),
            "y": np.arange(ny) * 1.5,
            "x": np.arange(nx),
        },
        attrs={"title": "test"},
    )
    return ds.chunk(chunks) if chunks else ds


@pytest.fixture(params=["directory", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    if request.param == "directory":
        return str(tmp_path / "store.zarr")
    return MemoryStore()


def tests_first_on_path() -> None:
    """Put this directory first on ``sys.path``, which cluster workers started now inherit.

    A worker imports a test module by name when it unpickles the module's
    functions, and the module's ``from conftest import ...`` takes the first
    conftest.py on the worker's path: this directory's, not the repository's
    (which only sets up the doctests, and which collecting the package's doctests
    puts first).
    """
    here = str(Path(__file__).resolve().parent)
    if sys.path[:1] != [here]:
        sys.path[:] = [here, *(p for p in sys.path if p != here)]


@contextlib.contextmanager
def cluster_of(n_workers: int, threads_per_worker: int) -> Iterator[object]:
    """A quiet LocalCluster of worker processes on free ports."""
    from distributed import LocalCluster

    tests_first_on_path()

    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address=":0",
        silence_logs=40,
    )
    try:
        yield cluster
    finally:
        _close_cluster(cluster)


def _close_cluster(cluster: Any) -> None:
    """Close a LocalCluster, and kill any worker process that outlives the close.

    distributed gives a nanny's worker a few seconds to exit; on a machine at load 20
    one took longer, and the close raised TimeoutError in the fixture's teardown (an
    error for a test that had passed). The workers are killed instead: none is left.
    """
    pids = []
    for nanny in list(getattr(cluster, "workers", {}).values()):
        process = getattr(getattr(nanny, "process", None), "process", None)
        if process is not None and process.pid:
            pids.append(process.pid)
    try:
        cluster.close(timeout=60)
    except (TimeoutError, OSError) as e:
        logging.getLogger(__name__).warning("LocalCluster close: %r; killing its workers", e)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[object]:
    """A LocalCluster of 2 worker processes (2 threads each), shared by the session."""
    with cluster_of(2, 2) as cluster:
        yield cluster


@pytest.fixture
def cluster_client(local_cluster: object) -> Iterator[object]:
    """A client of the shared cluster, the default only for the test using it."""
    from distributed import Client

    with Client(local_cluster) as client:  # type: ignore[arg-type]
        yield client


@pytest.fixture
def threads8() -> Iterator[None]:
    with dask.config.set(scheduler="threads", num_workers=8):
        yield


@pytest.fixture(scope="session")
def s3() -> Iterator[object]:
    """moto's S3 server (its own process, 127.0.0.1, free port) with a bucket "data"."""
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    from toolkit.testing import S3Server

    with S3Server() as server:
        server.create_bucket("data")
        yield server


@pytest.fixture(scope="session")
def azurite() -> Iterator[object]:
    """Azurite, Azure's Blob Storage emulator (its own process, 127.0.0.1, free port),
    with a container "data".

    Skips where obstore or Azurite is missing (``./dev test`` installs Azurite with npm),
    which ``TOOLKIT_REQUIRE_EXTRAS=1`` turns into a failure, as for the other extras.
    """
    pytest.importorskip("obstore")
    from toolkit.testing import AzuriteServer
    from toolkit.testing.servers import find_azurite

    binary = find_azurite()
    if binary is None:
        pytest.skip(
            "needs an extra: Azurite (npm install azurite; ./dev test installs it under "
            ".cache/azurite; or set TOOLKIT_AZURITE to an azurite-blob)"
        )
    with AzuriteServer(binary) as server:
        server.create_container("data")
        yield server


@dataclass
class Cloud:
    """One object store for a test: its server, the client toolkit uses, and its URLs.

    ``server`` is an :class:`~toolkit.testing.S3Server` or an
    :class:`~toolkit.testing.AzuriteServer`; both take ``storage_options(endpoint_url)``
    for a proxy at ``endpoint_url``, and ``dialect`` says whose errors a
    :class:`~toolkit.testing.FaultProxy` in front answers.
    """

    name: str
    server: Any
    client: str

    def url(self, path: str, bucket: str = "data") -> str:
        """``<scheme>://<bucket>/<path>`` on this store."""
        return f"{self.server.scheme}://{bucket}/{path}"

    def storage_options(self, endpoint_url: str | None = None, **extra: Any) -> dict[str, Any]:
        """Options reaching the server, or a proxy at ``endpoint_url``."""
        return dict(self.server.storage_options(endpoint_url, **extra))

    def proxy(self, **faults: Any) -> Any:
        """A :class:`~toolkit.testing.FaultProxy` in front of the server, in its dialect."""
        from toolkit.testing import FaultProxy

        return FaultProxy(self.server.endpoint_url, dialect=self.server.dialect, **faults)

    def new_bucket(self, name: str) -> str:
        """Create a bucket (an S3 bucket, an Azure container) and return its name."""
        self.server.create_bucket(name)
        return name


#: The object stores the cloud tests run on: S3 through each client, and Azure (obstore).
CLOUDS = ["s3-obstore", "s3-s3fs", "azure"]


@pytest.fixture(params=CLOUDS)
def cloud(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Cloud:
    """Each object store in turn: moto's S3 through obstore and s3fs, Azurite through obstore.

    The client is set through ``TOOLKIT_CLIENT``, as the ``client`` fixture sets it.
    """
    name = str(request.param)
    client = "s3fs" if name == "s3-s3fs" else "obstore"
    if client == "obstore":
        pytest.importorskip("obstore")
    server = request.getfixturevalue("azurite" if name == "azure" else "s3")
    monkeypatch.setenv("TOOLKIT_CLIENT", client)
    return Cloud(name, server, client)


@pytest.fixture(params=["obstore", "s3fs"])
def client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each object-store client in turn: URLs that name none go through it.

    Set through ``TOOLKIT_CLIENT``, so processes the test starts use it too.
    """
    if request.param == "obstore":
        pytest.importorskip("obstore")
    monkeypatch.setenv("TOOLKIT_CLIENT", request.param)
    return str(request.param)


def pytest_configure(config: pytest.Config) -> None:
    # Markers of xarray's own suite (tests/test_xarray_suite.py imports its classes).
    for line in (
        "skip_if_param(**params, reason, condition=True): skip where the params match",
        "skip_with_dask_array: xarray's, skipped with the dask-array chunk manager",
        "flaky: xarray's flaky tests (skipped, as xarray's CI does by default)",
        "network: needs the internet (skipped)",
    ):
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Apply xarray's ``skip_if_param`` marks, and skip its flaky and network tests."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        for mark in item.iter_markers("skip_if_param"):
            kw = dict(mark.kwargs)
            reason, condition = kw.pop("reason", ""), kw.pop("condition", True)
            if condition and all(
                k in params and (params[k] == v or getattr(params[k], "__name__", None) == v)
                for k, v in kw.items()
            ):
                item.add_marker(pytest.mark.skip(reason=reason))
        for name in ("flaky", "network"):
            if item.get_closest_marker(name) is not None:
                item.add_marker(pytest.mark.skip(reason=f"xarray's {name} test"))


def read_back(store: object) -> xr.Dataset:
    return xr.open_zarr(store, consolidated=False).load()  # type: ignore[arg-type]


__all__ = ["CLOUDS", "Cloud", "cluster_of", "make_dataset", "read_back", "snapshot", "zarr"]


# --------------------------------------------------------------------------- a browser


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def headless_chromium() -> Iterator[Any]:
    """A headless Chromium driven by selenium; skips (or fails under TOOLKIT_REQUIRE_BROWSER)
    where there is none. Its console is logged: ``driver.get_log("browser")``."""
    found = _chromium()
    if found is None:
        if os.environ.get("TOOLKIT_REQUIRE_BROWSER"):
            pytest.fail(
                "headless Chromium is required here: apt-get install chromium chromium-driver"
            )
        pytest.skip("needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    profile = tempfile.mkdtemp(prefix="toolkit-chromium-")
    # The machine has no internet: background networking would only be refused.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1100",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------- the docs

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def docs_site() -> Path:
    """The documentation site, built as ``./dev docs`` builds it (warnings are errors).

    ``docs/build.py`` skips the build while the site is from the current sources, so
    after ``./dev docs`` (as in CI) this costs nothing; else it builds once per session,
    executing the notebooks.
    """
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(REPO / "docs" / "build.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if done.returncode != 0:
        pytest.fail(f"the docs build failed:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}")
    return REPO / "docs" / "_build" / "html"
