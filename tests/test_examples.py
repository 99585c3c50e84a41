"""The examples under examples/ run as they stand, and the README shows them as they are."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import xarray as xr

ROOT = Path(__file__).parents[1]
MARK = "# --- In ten lines (README.md shows from here to the end) ---\n"


def test_the_readme_shows_the_ten_lines_of_the_example():
    lines = (ROOT / "examples" / "ten_lines.py").read_text().split(MARK, 1)[1]
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## In ten lines", 1)[1].split("\n## ", 1)[0]
    (shown,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert shown == lines
    assert len([ln for ln in lines.splitlines() if ln and not ln.startswith("import")]) == 10
    assert 'pip install "zarr-toolkit[' in section  # the extras are named


def test_the_ten_lines_run(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ten_lines.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "WritePlan" in r.stdout and "t2m_mean" in r.stdout
    era5 = xr.open_zarr(tmp_path / "era5.zarr")
    assert era5.sizes["time"] == 72 and era5.t2m.encoding["chunks"] == (24, 90, 180)
    series = xr.open_zarr(tmp_path / "series.zarr")
    assert series.t2m.encoding["chunks"] == (72, 30, 30)
    cube = xr.open_zarr(tmp_path / "cube.zarr")
    xr.testing.assert_equal(series.t2m.compute(), cube.t2m.compute())
    xr.testing.assert_equal(era5.t2m.compute(), cube.t2m.compute())
