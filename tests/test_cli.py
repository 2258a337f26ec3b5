"""The command line: bad input is one line and exit 2; render writes real COGs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dinotiles.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dinotiles.cli", *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["serve", "--port", "notaport"],
        ["render", "/no/such.tif", "/tmp/out.tif"],
        ["codebook", "build", "/no/such.tif", "--bundle", "/tmp", "--k", "8"],
        ["codebook", "import", "--centroids", "/no/c.npy", "--colors", "/no/r.npy", "--bundle", "/no/bundle"],
        ["export", "--weights", "/no/such/dir", "--out", "/tmp/x"],
    ],
)
def test_bad_arguments_are_one_line_exit_2(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    # exactly one line on stderr (no usage block, no warning, no traceback) and nothing on stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dinotiles: error: "), result.stderr
    assert result.stderr == lines[0] + "\n"
    assert result.stdout == ""


@pytest.mark.slow
def test_render_writes_cogs(bundle, sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DINOTILES_BUNDLE", str(bundle.root))
    out = tmp_path / "clusters.tif"
    assert main(["render", str(sample), str(out)]) == 0
    ids_path = tmp_path / "clusters_ids.tif"
    with rasterio.open(out) as rgb, rasterio.open(ids_path) as ids:
        assert rgb.count == 4 and rgb.dtypes[0] == "uint8"
        assert ids.dtypes[0] == "uint16" and ids.nodata == 65535
        # 1000 px of RD New read onto UTM 31N (rotated ~1.8°) on the 91 m window lattice: 72 patches and
        # up to a window core of padding on each axis
        assert all(72 <= n <= 72 + 26 + 2 for n in ids.shape), ids.shape
        assert ids.res == (3.5, 3.5) and ids.crs == rgb.crs and ids.crs.to_epsg() == 32631
        assert ids.transform.c % 91 == 0 and ids.transform.f % 91 == 0  # the lattice origin
        assert ids.overviews(1), "a COG with overviews"
        values = ids.read(1)
        colours = rgb.read()
    valid = values != 65535
    assert valid.mean() > 0.5
    assert (np.moveaxis(colours[:3], 0, -1)[valid] == bundle.codebook.colors[values[valid]]).all()
    assert (colours[3][~valid] == 0).all()
