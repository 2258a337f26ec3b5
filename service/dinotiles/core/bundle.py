"""A bundle directory: model.onnx + codebook + bundle.json, checked before anything runs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from dinotiles.core.errors import DinotilesError

BUNDLE_FORMAT = 1
METRICS = ("cosine", "ip", "l2")


class BundleError(DinotilesError, ValueError):
    """A bundle that cannot serve, with a one-line reason."""


@dataclass(frozen=True)
class Codebook:
    """K centroids, their colours and how features are matched to them."""

    centroids: np.ndarray  # (K, D) float32
    colors: np.ndarray  # (K, 3) uint8
    metric: str
    manifest: dict[str, Any]
    position_basis: np.ndarray | None = None  # (P, D) orthonormal rows projected out before matching
    hierarchy: np.ndarray | None = None  # (K-1, 4) linkage of the centroids, for groups

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @cached_property
    def tree(self) -> np.ndarray:
        """The centroids' hierarchy (scipy linkage): hierarchy.npy when the codebook carries it, else computed."""
        from dinotiles.core.groups import hierarchy

        if self.hierarchy is not None:
            return self.hierarchy
        return hierarchy(self.centroids, self.metric)

    @cached_property
    def _groups(self) -> dict[int, np.ndarray]:
        return {}

    def groups(self, n: int) -> np.ndarray:
        """Cluster → group (uint16) when the hierarchy is cut into at most n groups (2..64)."""
        from dinotiles.core.groups import MAX_GROUPS, MIN_GROUPS, cut

        if not MIN_GROUPS <= n <= MAX_GROUPS:
            raise ValueError(f"groups must be between {MIN_GROUPS} and {MAX_GROUPS}, got {n}")
        if n not in self._groups:
            self._groups[n] = cut(self.tree, n)
        return self._groups[n]

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the codebook in cache keys: same centroids, same IDs."""
        digest = hashlib.sha256(self.centroids.tobytes())
        if self.position_basis is not None:
            digest.update(self.position_basis.tobytes())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Bundle:
    """Everything the runtime needs, validated at load time."""

    root: Path
    manifest: dict[str, Any]
    codebook: Codebook

    @property
    def model_path(self) -> Path:
        return self.root / "model.onnx"

    @property
    def window(self) -> int:
        return int(self.manifest["window_size"])

    @property
    def patch(self) -> int:
        return int(self.manifest["patch_size"])

    @property
    def gsd(self) -> float:
        return float(self.manifest["target_gsd"])

    @property
    def dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @cached_property
    def fingerprint(self) -> str:
        """Weights + encoder + analysis grid + codebook: what a cached cluster ID (and a source's grid) depends on."""
        w = self.manifest["weights"]["sha256"][:16]
        grid = f"{self.gsd:g}m{self.patch}p{self.window}w"
        return f"{w}-{grid}-{self.manifest['feature_layer']}-{self.codebook.fingerprint}"


def weights_fingerprint(manifest: dict[str, Any]) -> dict[str, Any]:
    """The fields a codebook must share with the encoder it was built for."""
    return {
        "weights_sha256": manifest["weights"]["sha256"],
        "feature_layer": manifest["feature_layer"],
        "embed_dim": manifest["embed_dim"],
    }


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BundleError(f"{path} is missing") from exc
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object")
    return data


def load_codebook(directory: Path, manifest: dict[str, Any]) -> Codebook:
    """Load centroids and colours and refuse ones built for other weights."""
    meta = read_json(directory / "codebook.json")
    expected = weights_fingerprint(manifest)
    differ = [f"{k}: codebook {meta.get(k)!r} vs bundle {v!r}" for k, v in expected.items() if meta.get(k) != v]
    if differ:
        raise BundleError("codebook was built for other weights (" + "; ".join(differ) + ")")
    metric = meta.get("metric", "cosine")
    if metric not in METRICS:
        raise BundleError(f"codebook metric {metric!r} is not one of {METRICS}")
    try:
        centroids = np.load(directory / "centroids.npy").astype(np.float32)
        colors = np.load(directory / "colors.npy")
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read the codebook in {directory}: {exc}") from exc
    if centroids.ndim != 2 or centroids.shape[1] != manifest["embed_dim"]:
        raise BundleError(f"centroids shape {centroids.shape} does not match embed_dim {manifest['embed_dim']}")
    if colors.shape != (centroids.shape[0], 3) or colors.dtype != np.uint8:
        raise BundleError(f"colors must be uint8 ({centroids.shape[0]}, 3), got {colors.dtype} {colors.shape}")
    if centroids.shape[0] >= 65535:
        raise BundleError("at most 65534 centroids: 65535 marks no data")
    basis = None
    if (directory / "position_basis.npy").exists():
        basis = np.load(directory / "position_basis.npy").astype(np.float32)
        if basis.ndim != 2 or basis.shape[1] != centroids.shape[1]:
            raise BundleError(f"position_basis shape {basis.shape} does not match the centroids {centroids.shape}")
    tree = None
    if (directory / "hierarchy.npy").exists():
        tree = np.load(directory / "hierarchy.npy").astype(np.float64)
        if tree.shape != (centroids.shape[0] - 1, 4):
            raise BundleError(f"hierarchy.npy shape {tree.shape} does not fit {centroids.shape[0]} centroids")
    return Codebook(
        centroids=centroids, colors=colors, metric=metric, manifest=meta, position_basis=basis, hierarchy=tree
    )


def load_manifest(root: Path) -> dict[str, Any]:
    """bundle.json of an encoder-only bundle (what `codebook build` starts from)."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle directory {root} does not exist (run `dinotiles demo` or `dinotiles export`)")
    manifest = read_json(root / "bundle.json")
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{root}/bundle.json has format {manifest.get('format')!r}, expected {BUNDLE_FORMAT}")
    if not (root / "model.onnx").exists() and not (root / "torch" / "config.json").exists():
        raise BundleError(f"{root}/model.onnx is missing")  # a torch-only bundle (GPU nodes with torch) serves too
    return manifest


def load_bundle(root: Path, codebook_dir: Path | None = None) -> Bundle:
    """Open a bundle; the codebook comes from ``root`` unless another directory is given."""
    root = Path(root)
    manifest = load_manifest(root)
    return Bundle(root=root, manifest=manifest, codebook=load_codebook(codebook_dir or root, manifest))
