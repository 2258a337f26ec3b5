"""Codebooks: build one from imagery (k-means over patch features), or import the seed's.

Features come from the runtime's own windows (dinotiles.core.grid) and encoder, so a
codebook sees exactly what the server sees.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rio_tiler.io import Reader
from tqdm import tqdm

from dinotiles.core.bundle import BundleError, load_manifest, weights_fingerprint
from dinotiles.core.encoder import Encoder
from dinotiles.core.grid import BORDER, grid_for, read_window
from dinotiles.core.groups import hierarchy
from dinotiles.core.sources import band_plan, open_dataset

BATCH = 4
MAX_PATCHES = 10**12  # an offline build reads what the operator names; the server's limit is for clients


def tsne_colors(centroids: np.ndarray, seed: int = 0) -> np.ndarray:
    """t-SNE of the centroids to 3-D, each axis scaled to 0-255: near clusters, near colours."""
    from sklearn.manifold import TSNE

    k = centroids.shape[0]
    unit = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    emb = TSNE(
        n_components=3, perplexity=min(30.0, max(2.0, (k - 1) / 4)), init="pca", random_state=seed, metric="cosine"
    ).fit_transform(unit)
    lo, hi = emb.min(axis=0), emb.max(axis=0)
    return np.round((emb - lo) / np.maximum(hi - lo, 1e-12) * 255).astype(np.uint8)


def count_windows(images: Sequence[Path], manifest: dict[str, Any]) -> int:
    total = 0
    for path in images:
        with open_dataset(str(path)) as ds:
            g = grid_for(ds, manifest["target_gsd"], manifest["patch_size"], manifest["window_size"], MAX_PATCHES)
            total += g.window_rows * g.window_cols
    return total


def sample_features(
    images: Sequence[Path], bundle_dir: Path, manifest: dict[str, Any], max_patches: int, seed: int, store: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Stream patch features of valid core patches into a float16 memmap (bounded memory).

    Also returns the mean unit feature at each core position of the window (over all
    valid patches, sampled or not), from which the positional basis is derived.
    """
    rng = np.random.default_rng(seed)
    window, patch = manifest["window_size"], manifest["patch_size"]
    encoder = Encoder(bundle_dir / "model.onnx", window, patch, None)
    core = window // patch - 2 * BORDER
    windows = count_windows(images, manifest)
    keep = min(1.0, max_patches / max(1, windows * core * core))
    feats = np.lib.format.open_memmap(store, mode="w+", dtype=np.float16, shape=(max_patches, manifest["embed_dim"]))
    n = 0
    pos_sum = np.zeros((core * core, manifest["embed_dim"]), np.float64)
    pos_count = np.zeros(core * core, np.int64)
    with tqdm(total=windows, desc="encoding windows", unit="win") as bar:
        for path in images:
            ds = open_dataset(str(path))
            grid = grid_for(ds, manifest["target_gsd"], patch, window, MAX_PATCHES)
            plan = band_plan(ds)
            with Reader(str(path), dataset=ds) as reader:
                cells = [(i, j) for i in range(grid.window_rows) for j in range(grid.window_cols)]
                for start in range(0, len(cells), BATCH):
                    chunk = [read_window(reader, plan, grid, i, j) for i, j in cells[start : start + BATCH]]
                    tokens, _ = encoder.features(np.stack([w.image for w in chunk]))
                    sl = slice(BORDER, BORDER + core)
                    for w, t in zip(chunk, tokens, strict=True):
                        valid = w.valid[sl, sl].ravel()
                        f = t[sl, sl].reshape(-1, t.shape[-1])[valid]
                        pos_sum[valid] += unit(f)
                        pos_count[valid] += 1
                        f = f[rng.random(len(f)) < keep][: max_patches - n]
                        feats[n : n + len(f)] = f
                        n += len(f)
                    bar.update(len(chunk))
    if n == 0:
        raise BundleError("no valid patches found in the images")
    seen = pos_count > 0
    return feats[:n], pos_sum[seen] / pos_count[seen, None]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def position_basis(position_means: np.ndarray, dirs: int) -> np.ndarray:
    """The ``dirs`` strongest directions along which the mean feature varies with window position.

    Features of the same ground patch differ with where it sits in the window; at a
    window seam the two sides sit at opposite ends, so without this the seams show.
    """
    if dirs <= 0:
        return np.zeros((0, position_means.shape[1]), np.float32)
    centred = position_means - position_means.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:dirs].astype(np.float32)


def project(x: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Unit features with the positional directions removed, renormalised (as the server does)."""
    x = unit(x)
    if len(basis):
        x = x - (x @ basis.T) @ basis
    return unit(x)


def kmeans(features: np.ndarray, k: int, seed: int, basis: np.ndarray, epochs: int = 5) -> np.ndarray:
    """Spherical MiniBatchKMeans over projected unit features, chunk by chunk from disk."""
    from sklearn.cluster import MiniBatchKMeans

    if len(features) < k:
        raise BundleError(f"only {len(features)} patches for k={k}: give more images or a smaller --k")
    rng = np.random.default_rng(seed)
    chunk = max(4096, 3 * k)
    km = MiniBatchKMeans(n_clusters=k, batch_size=chunk, random_state=seed, n_init=1, init="k-means++")
    order = rng.permutation(len(features))
    with tqdm(total=epochs * len(order), desc="k-means", unit="patch") as bar:
        for _ in range(epochs):
            rng.shuffle(order)
            for start in range(0, len(order), chunk):
                idx = np.sort(order[start : start + chunk])
                if len(idx) < k:
                    continue
                km.partial_fit(project(np.asarray(features[idx], dtype=np.float32), basis))
                bar.update(len(idx))
    c = km.cluster_centers_.astype(np.float32)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def write_codebook(
    out: Path, centroids: np.ndarray, colors: np.ndarray, meta: dict[str, Any], basis: np.ndarray | None = None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "centroids.npy", centroids)
    np.save(out / "colors.npy", colors)
    if basis is not None and len(basis):
        np.save(out / "position_basis.npy", basis)
    else:
        (out / "position_basis.npy").unlink(missing_ok=True)
    # the centroids' hierarchy, so that any request can ask for groups=N (dinotiles.core.groups)
    np.save(out / "hierarchy.npy", hierarchy(centroids, meta.get("metric", "cosine")))
    meta = {**meta, "hierarchy": "Ward linkage of the centroids (on unit vectors; raw for l2), scipy format"}
    (out / "codebook.json").write_text(json.dumps(meta, indent=2) + "\n")


def build(
    images: Sequence[Path],
    bundle_dir: Path,
    k: int,
    max_patches: int = 200_000,
    seed: int = 0,
    out: Path | None = None,
    position_dirs: int = 8,
) -> dict[str, Any]:
    """The full build: sample → positional basis → k-means (cosine) → t-SNE colours → codebook files."""
    manifest = load_manifest(bundle_dir)
    with tempfile.TemporaryDirectory() as tmp:
        feats, position_means = sample_features(images, bundle_dir, manifest, max_patches, seed, Path(tmp) / "f.npy")
        basis = position_basis(position_means, position_dirs)
        centroids = kmeans(feats, k, seed, basis)
        patches = len(feats)
    colors = tsne_colors(centroids, seed)
    meta = {
        **weights_fingerprint(manifest),
        "k": k,
        "metric": "cosine",
        "colors": "t-SNE of centroids to 3-D, each axis scaled to 0-255",
        "built_from": [p.name for p in images],
        "patches_sampled": patches,
        "seed": seed,
        "position_dirs": len(basis),
        "command": f"dinotiles codebook build {' '.join(p.name for p in images)} "
        f"--k {k} --max-patches {max_patches} --seed {seed} --position-dirs {position_dirs}",
    }
    write_codebook(out or bundle_dir, centroids, colors, meta, basis)
    return meta


def import_seed(centroids: Path, colors: Path, bundle_dir: Path, metric: str = "ip") -> dict[str, Any]:
    """The seed project's published codebook: inner-product search on unnormalised features."""
    manifest = load_manifest(bundle_dir)
    try:
        c = np.load(centroids).astype(np.float32)
        rgb = np.load(colors)
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read codebook arrays: {exc}") from exc
    if c.ndim != 2 or c.shape[1] != manifest["embed_dim"]:
        raise BundleError(
            f"centroids are {c.shape}, but this bundle's encoder gives {manifest['embed_dim']}-d features "
            f"({manifest['variant']}); the seed codebook is for facebook/dinov2-with-registers-base"
        )
    if rgb.shape != (c.shape[0], 3):
        raise BundleError(f"colors are {rgb.shape}, expected ({c.shape[0]}, 3)")
    meta = {
        **weights_fingerprint(manifest),
        "k": int(c.shape[0]),
        "metric": metric,
        "colors": f"imported from {colors.name}",
        "built_from": [centroids.name],
    }
    write_codebook(bundle_dir, c, rgb.astype(np.uint8), meta, None)
    return meta
