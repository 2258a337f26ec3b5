"""Shared set-up for benchmarks: the demo bundle, real images, an engine with a fresh cache."""

from __future__ import annotations

import platform
from dataclasses import replace
from pathlib import Path

import morecantile
import onnxruntime as ort

from export.demo import prepare
from service.bundle import Bundle, load_bundle
from service.cache import ByteLRU
from service.clusters import ClusterEngine
from service.config import DEMO_DIR, Settings
from service.encoder import Encoder
from service.reader import ClusterReader

ROOT = Path(__file__).resolve().parent.parent
OAM = ROOT.parent / "shared" / "data" / "oam"
TMS = morecantile.tms.get("WebMercatorQuad")


def demo_bundle() -> Bundle:
    bundle_dir, _ = prepare(DEMO_DIR)
    return load_bundle(bundle_dir)


def oam_images() -> list[Path]:
    images = sorted(OAM.glob("*.tif"))
    if not images:
        raise SystemExit(f"benchmarks need the OAM imagery at {OAM} (see ../shared/data/README.md)")
    return images


def engine(bundle: Bundle, cache_bytes: int = 1 << 30) -> ClusterEngine:
    return ClusterEngine(bundle, Encoder.for_bundle(bundle), ByteLRU(cache_bytes))


def settings_for(*roots: Path) -> Settings:
    return replace(Settings(), local_roots=tuple(roots))


def open_reader(eng: ClusterEngine, path: Path) -> ClusterReader:
    return ClusterReader(str(path), eng, settings_for(path.parent), TMS)


def machine() -> str:
    """CPU model, cores and the ONNX Runtime provider the encoder runs on."""
    import os

    from service.encoder import pick_providers

    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, onnxruntime {ort.__version__} {pick_providers()[0]}"
