"""Encoder backends on the real demo bundle and real imagery: torch vs ONNX Runtime, fp16, selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from rasterio.windows import Window

from dinotiles.backends import choose_backend, open_encoder
from dinotiles.core.bundle import Bundle, load_bundle
from dinotiles.core.encoder import Encoder, EncoderConfigError
from dinotiles.server.app import create_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def windows(oam_image: Path, bundle: Bundle) -> np.ndarray:
    """Four real 0.25 m windows (fields, roofs, roads) from an OpenAerialMap COG."""
    w = bundle.window
    with rasterio.open(oam_image) as ds:
        spots = [(0, 0), (1000, 1200), (2000, 2400), (3000, 500)]
        return np.stack([ds.read((1, 2, 3), window=Window(c, r, w, w)) for r, c in spots])


def test_torch_backend_matches_onnx_runtime_on_cpu(bundle: Bundle, windows: np.ndarray) -> None:
    from dinotiles.torch_encoder import TorchEncoder

    onnx, torch_fp32 = Encoder.for_bundle(bundle), TorchEncoder(bundle, "fp32", device="cpu")
    fa, ca = onnx.features(windows)
    fb, cb = torch_fp32.features(windows)
    assert fa.shape == fb.shape and ca.shape == cb.shape
    assert np.abs(fa - fb).max() <= 1e-3 and np.abs(ca - cb).max() <= 1e-3
    ids_onnx, ids_torch = onnx.cluster_ids(windows), torch_fp32.cluster_ids(windows)
    assert len(np.unique(ids_onnx)) > 5  # real imagery: many clusters, so agreement means something
    assert (ids_onnx == ids_torch).mean() >= 0.995


def test_reduced_precision_stays_close_and_is_cached_apart(bundle: Bundle, windows: np.ndarray) -> None:
    from dinotiles.torch_encoder import TorchEncoder

    reference = Encoder.for_bundle(bundle).cluster_ids(windows)
    half = Encoder.for_bundle(bundle, precision="fp16")
    bf16 = TorchEncoder(bundle, "bf16", device="cpu")
    # fp16 keeps ~3 decimal digits, bf16 ~2: most patches keep their nearest centroid (GPU bar: 99 %)
    assert (half.cluster_ids(windows) == reference).mean() >= 0.98
    assert (bf16.cluster_ids(windows) == reference).mean() >= 0.97
    assert half.cache_tag == "-fp16" and bf16.cache_tag == "-bf16" and Encoder.for_bundle(bundle).cache_tag == ""


def test_a_torch_served_tile_matches_the_onnx_one(app_settings, bundle: Bundle, oam_image: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.test_tiles import TMS, centre, ids_tile

    tiles = []
    for kind in ("onnx", "torch"):
        with TestClient(create_app(app_settings.replace(encoder=kind), bundle)) as client:
            lon, lat = centre(client, str(oam_image))
            t = TMS.tile(lon, lat, 19)
            tiles.append(ids_tile(client, str(oam_image), 19, t.x, t.y))
            assert client.get("/healthz").json()["providers"][0].startswith("torch" if kind == "torch" else "CPU")
    valid = tiles[0] != 65535
    assert valid.mean() > 0.5 and np.array_equal(valid, tiles[1] != 65535)
    assert (tiles[0][valid] == tiles[1][valid]).mean() >= 0.995


def test_encoder_settings_that_cannot_be_honoured_are_refused(bundle: Bundle, tmp_path: Path) -> None:
    assert choose_backend("auto") == "onnx"  # no GPU here: ONNX Runtime on the CPU
    with pytest.raises(EncoderConfigError, match="bf16"):
        open_encoder(bundle, "onnx", "bf16")
    with pytest.raises(EncoderConfigError, match="not available"):
        open_encoder(bundle, "onnx", providers=("CUDAExecutionProvider",))
    with pytest.raises(EncoderConfigError, match="encoder must be one of"):
        choose_backend("tensorflow")
    # a bundle exported before bundles carried torch weights: a one-line reason, not a traceback
    old = tmp_path / "old"
    old.mkdir()
    for f in bundle.root.iterdir():
        if f.is_file():
            (old / f.name).symlink_to(f)
    with pytest.raises(Exception, match="carries no torch weights"):
        open_encoder(load_bundle(old), "torch")


def test_serve_with_an_impossible_encoder_setting_exits_2(bundle: Bundle) -> None:
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "DINOTILES_BUNDLE": str(bundle.root),
        "DINOTILES_PRECISION": "bf16",
        "DINOTILES_ENCODER": "onnx",
    }
    run = subprocess.run(
        [sys.executable, "-m", "dinotiles.cli", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "bf16" in run.stderr and "Traceback" not in run.stderr, run.stderr
