"""Prepare .gpukit/ for benchmarks/gpu.sh: what a bare GPU machine needs, in two loads under 64 MiB each.

- ``wheels/``: the packages that machine's image lacks (rasterio, titiler.core, …), at the versions
  installed here, built for its Python (cp312, manylinux x86-64);
- ``bundle/``: the demo bundle, torch-only, weights stored in fp16 (half the bytes; the benchmark
  measures speed, and compares bf16 with fp32 on these same weights);
- ``oam/``: the two OpenAerialMap COGs from ../shared/data (never committed: .gpukit is ignored).

    python -m benchmarks.gpu_kit
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / ".gpukit"
LIMIT = 64 * 1024 * 1024
# what the device image lacks (its package list: /work/.library/device/KINDS.md)
MISSING = [
    "rasterio", "rio-tiler", "titiler.core", "morecantile", "pyproj", "fastapi", "starlette", "uvicorn",
    "pydantic", "pydantic-core", "pydantic-settings", "typing-inspection", "annotated-types",
    "geojson-pydantic", "pystac", "pystac-client", "cachetools", "color-operations", "numexpr",
    "affine", "cligj", "click-plugins", "redis", "python-dotenv",
]  # fmt: skip
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def pinned(name: str) -> str:
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return name


def wheels(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version"]
    cmd += ["3.12", "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(dest)]
    subprocess.run([*cmd, *map(pinned, MISSING)], check=True)


def bundle(src: Path, dest: Path) -> None:
    """The bundle without model.onnx, torch weights in fp16."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    if dest.exists():
        shutil.rmtree(dest)
    (dest / "torch").mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "model.onnx":
            shutil.copy2(f, dest / f.name)
    shutil.copy2(src / "torch" / "config.json", dest / "torch" / "config.json")
    tensors = load_file(str(src / "torch" / "model.safetensors"))
    half = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()}
    save_file(half, str(dest / "torch" / "model.safetensors"), metadata={"format": "pt"})


def size(*paths: Path) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def tracked_size() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def main() -> None:
    from benchmarks.common import OAM, demo_bundle

    images = sorted(OAM.glob("*.tif"))
    if not images:
        raise SystemExit(f"the OAM imagery is not at {OAM} (see ../shared/data/README.md)")
    wheels(KIT / "wheels")
    bundle(demo_bundle().root, KIT / "bundle")
    (KIT / "oam").mkdir(parents=True, exist_ok=True)
    for image in images:
        shutil.copy2(image, KIT / "oam" / image.name)
    repo = tracked_size()
    loads = {"install": size(KIT / "wheels"), "run": size(KIT / "bundle", KIT / "oam")}
    for name, n in loads.items():
        total = n + repo
        print(f"{name}: {n / 2**20:.1f} MiB + repository {repo / 2**20:.1f} MiB = {total / 2**20:.1f} MiB")
        if total > LIMIT:
            raise SystemExit(f"the {name} load is over 64 MiB")


if __name__ == "__main__":
    main()
