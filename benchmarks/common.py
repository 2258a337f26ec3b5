"""Shared set-up for benchmarks: the demo bundle, real images, an engine with a fresh cache."""

from __future__ import annotations

import platform
from pathlib import Path

import morecantile
import numpy as np
import onnxruntime as ort

from dinotiles.core.bundle import Bundle, load_bundle
from dinotiles.core.cache import ByteLRU
from dinotiles.core.encoder import Encoder
from dinotiles.core.engine import ClusterEngine
from dinotiles.core.reader import ClusterReader, cluster_reader
from dinotiles.core.sources import Source
from dinotiles.server.settings import Settings, demo_dir
from dinotiles.training.demo import prepare

ROOT = Path(__file__).resolve().parent.parent
OAM = ROOT.parent / "shared" / "data" / "oam"
TMS = morecantile.tms.get("WebMercatorQuad")


def demo_bundle() -> Bundle:
    bundle_dir, _ = prepare(demo_dir())
    return load_bundle(bundle_dir)


def oam_images() -> list[Path]:
    images = sorted(OAM.glob("*.tif"))
    if not images:
        raise SystemExit(f"benchmarks need the OAM imagery at {OAM} (see ../shared/data/README.md)")
    return images


def engine(
    bundle: Bundle, cache_bytes: int = 1 << 30, blend: bool = True, encoder: Encoder | None = None
) -> ClusterEngine:
    """An engine with empty caches (``encoder``: reuse one already loaded)."""
    return ClusterEngine(bundle, encoder or Encoder.for_bundle(bundle), ByteLRU(cache_bytes), blend=blend)


def settings_for(*roots: Path) -> Settings:
    return Settings().replace(local_roots=tuple(roots))


def open_reader(eng: ClusterEngine, path: Path) -> ClusterReader:
    settings = settings_for(path.parent)
    reader = cluster_reader(eng, settings.source_policy(), settings.request_limits())
    return reader(Source.local(str(path)), tms=TMS)


def machine() -> str:
    """CPU model, cores and the ONNX Runtime provider the encoder runs on."""
    import os

    from dinotiles.core.encoder import pick_providers

    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, onnxruntime {ort.__version__} {pick_providers()[0]}"


def seed_search(tokens: np.ndarray, centroids: np.ndarray, basis: np.ndarray | None) -> int:
    """The seed notebook's nearest-centroid search: one patch at a time, in Python (patches searched)."""
    done = 0
    for feat in tokens.reshape(-1, tokens.shape[-1]):
        f = feat / np.linalg.norm(feat)
        if basis is not None:
            f = f - (f @ basis.T) @ basis
        int(np.argmax(centroids @ f))
        done += 1
    return done
