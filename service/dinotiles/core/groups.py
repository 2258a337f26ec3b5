"""Groups: the codebook's K clusters merged into N super-clusters (2–64) with colours people can tell apart.

Why: at K = 512 the t-SNE colours are faithful (similar clusters look alike) but hundreds of them are
near-duplicates to the eye. A hierarchy of the centroids (Ward linkage on unit vectors, i.e. on cosine distance,
the metric the clusters were built with) lets any request ask for ``groups=N``: each cluster maps to
the group that holds it when the tree is cut into N, the same for every image and zoom, and each
group gets a categorical colour chosen to be far from the others (greedy max-min in CIELAB, the
Glasbey construction).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

MIN_GROUPS, MAX_GROUPS = 2, 64


def hierarchy(centroids: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """scipy's linkage matrix (K-1, 4) of the centroids: Ward's, on unit vectors unless the codebook is L2.

    On unit vectors the Euclidean distance is a function of the cosine one (‖a−b‖² = 2 − 2 cos), so
    this is Ward on cosine distance. Ward rather than average linkage: average leaves a few outlier
    clusters as groups of their own (2 groups of the shipped codebook: 506 + 6 clusters), Ward gives
    groups of comparable extent, which is what a map legend needs.
    """
    from scipy.cluster.hierarchy import linkage

    data = np.asarray(centroids, dtype=np.float64)
    if metric != "l2":
        data = data / np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-12)
    return np.asarray(linkage(data, method="ward"))


def cut(tree: np.ndarray, n: int) -> np.ndarray:
    """Cluster → group (uint16, 0..m-1, m ≤ n) when the tree is cut into at most n groups.

    Groups are numbered by their lowest member cluster, so the numbering is deterministic.
    """
    from scipy.cluster.hierarchy import fcluster

    labels = fcluster(tree, t=n, criterion="maxclust")
    first: dict[int, int] = {}
    for cluster, label in enumerate(labels):
        first.setdefault(int(label), cluster)
    order = {label: g for g, label in enumerate(sorted(first, key=first.__getitem__))}
    return np.array([order[int(label)] for label in labels], dtype=np.uint16)


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


@lru_cache(maxsize=1)
def palette(n: int = MAX_GROUPS) -> np.ndarray:
    """n RGB colours, each as far as possible (CIELAB ΔE) from those before it and from white and black.

    Greedy max-min over a 24-level sRGB grid; very light and very dark colours are left out so
    that groups show on an imagery basemap and against a white page.
    """
    levels = np.linspace(0, 255, 24).round().astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    lab = _srgb_to_lab(grid)
    usable = (lab[:, 0] > 25) & (lab[:, 0] < 90)
    grid, lab = grid[usable], lab[usable]
    chosen: list[int] = []
    nearest = np.full(len(grid), np.inf)
    for anchor in (np.array([[255, 255, 255]]), np.array([[0, 0, 0]])):  # stay away from white and black
        nearest = np.minimum(nearest, np.linalg.norm(lab - _srgb_to_lab(anchor), axis=1))
    for _ in range(n):
        k = int(np.argmax(nearest))
        chosen.append(k)
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[k], axis=1))
    return grid[chosen].astype(np.uint8)


def min_delta_e(colors: np.ndarray) -> float:
    """The smallest CIELAB distance between two of the colours (how easily the closest pair is told apart)."""
    lab = _srgb_to_lab(np.asarray(colors))
    d = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    d[np.diag_indices(len(lab))] = np.inf
    return float(d.min())
