"""The GPU benchmark script runs here, small and on the CPU, so that it cannot rot before a GPU run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import OAM, ROOT

pytestmark = pytest.mark.slow


def test_gpu_benchmark_script_runs_small_on_the_cpu(demo: tuple[Path, Path], tmp_path: Path) -> None:
    if not sorted(OAM.glob("*.tif")):
        pytest.skip(f"real OAM imagery not found at {OAM} (see ../shared/data/README.md)")
    env_bundle = demo[0].parent
    run = subprocess.run(
        ["benchmarks/gpu.sh", "--small", str(OAM)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "DINOTILES_DEMO_DIR": str(env_bundle), "HOME": str(tmp_path)},
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, run.stderr[-3000:]
    rate = r"([0-9.]+)"
    seed = float(re.search(rf"\[1\] seed method .*?{rate} patches/s", out).group(1))  # type: ignore[union-attr]
    ours = float(re.search(rf"\[1\] render .*?{rate} patches/s", out).group(1))  # type: ignore[union-attr]
    ratio = float(re.search(rf"ratio render / seed: {rate}x", out).group(1))  # type: ignore[union-attr]
    assert seed > 0 and ours > 0 and abs(ratio - ours / seed) / ratio < 0.05
    assert re.search(r"\[2\] encoder torch fp32: batch 1: [0-9.]+ windows/s, batch 2: [0-9.]+ windows/s", out)
    agree = float(re.search(rf"cluster IDs fp32 vs fp32: {rate} % equal", out).group(1))  # type: ignore[union-attr]
    assert agree == 100.0  # the same encoder twice: deterministic
    assert re.search(r"\[3\] reads .*1 threads: [0-9.]+ windows/s, 2 threads: [0-9.]+ windows/s", out)
    cold = re.search(r"\[4\] cold z18 tiles through the app: (\d+)/(\d+) ok", out)
    cached = re.search(r"\[5\] cached tiles: (\d+)/(\d+) ok, ([0-9.]+) tiles/s", out)
    assert cold and cold.group(1) == cold.group(2) == "4", out
    assert cached and cached.group(1) == cached.group(2) == "50" and float(cached.group(3)) > 0, out
    assert "size=" in out  # the app's encoder batches were reported from /metrics
