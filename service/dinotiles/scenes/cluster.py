"""Whole-scene clustering: one feature per image → UMAP → Dirichlet-process Gaussian mixture.

The method of Ray & Skurikhin (arXiv 2409.03938): features from a DINOv2 fine-tuned on a
labelled source set, a manifold projection to a few Euclidean dimensions, then a Bayesian
nonparametric mixture that infers the number of clusters and the memberships together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dinotiles.core.encoder import Encoder

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
FEATURES = ("cls", "mean", "both")
# Chosen on validation classes only (docs/scene-clustering.md: 56 settings, 3 seeded class splits, best
# mean validation ACC): p = 4, 30 neighbours, diagonal DP-GMM. The previous p = 8 / 15 over-split (K 14
# for 10 test classes where this gives 9 ± 1.4).
UMAP_DIMS = 4  # p: few dimensions keep one scene type in one mode, so the mixture does not split it
UMAP_NEIGHBOURS = 30  # a wider neighbourhood: UMAP keeps a class together rather than its sub-types apart
MIN_WEIGHT = 0.01  # a component holding fewer of the items is not a cluster


def scene_vector(patches: np.ndarray, cls: np.ndarray, feature: str) -> np.ndarray:
    """One vector per image from the encoder's outputs ([B, g, g, D] patches, [B, D] CLS)."""
    mean = patches.reshape(patches.shape[0], -1, patches.shape[-1]).mean(axis=1)
    if feature == "cls":
        return cls
    if feature == "mean":
        return mean
    if feature == "both":
        return np.concatenate([_unit(cls), _unit(mean)], axis=1)
    raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def load_image(path: Path, size: int) -> np.ndarray:
    """An image file as uint8 [3, size, size] (bilinear), for non-georeferenced scene images."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb).transpose(2, 0, 1).copy()


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def folder_features(
    encoder: Encoder, files: Sequence[Path], window: int, feature: str = "cls", batch: int = 16, progress: bool = True
) -> np.ndarray:
    """Scene vectors for image files, resized to the encoder's window."""
    out = []
    for start in tqdm(range(0, len(files), batch), desc="scene features", unit="batch", disable=not progress):
        images = np.stack([load_image(p, window) for p in files[start : start + batch]])
        patches, cls = encoder.features(images)
        out.append(scene_vector(patches, cls, feature))
    return np.concatenate(out).astype(np.float32)


@dataclass
class SceneClusters:
    """What the analyst gets: K, each item's cluster and probability, a representative per cluster."""

    labels: np.ndarray
    probabilities: np.ndarray
    k: int
    representatives: dict[int, int]
    embedding: np.ndarray = field(repr=False)
    method: SceneMethod | None = None

    def as_dict(self, names: Sequence[str]) -> dict[str, Any]:
        sizes = np.bincount(self.labels, minlength=self.k)
        return {
            "k": self.k,
            "items": [
                {"id": names[i], "cluster": int(c), "probability": float(p)}
                for i, (c, p) in enumerate(zip(self.labels, self.probabilities, strict=True))
            ],
            "representatives": {str(c): names[i] for c, i in sorted(self.representatives.items())},
            "clusters": [
                {
                    "cluster": c,
                    "size": int(sizes[c]),
                    "representative": names[self.representatives[c]],
                    "mean_probability": float(self.probabilities[self.labels == c].mean()),
                }
                for c in range(self.k)
            ],
            "method": (self.method or DEFAULT_METHOD).describe(),
        }


@dataclass(frozen=True)
class SceneMethod:
    """How scene vectors become clusters: UMAP to ``dims``, then a partition that infers K.

    ``dpgmm``: a Dirichlet-process Gaussian mixture (``covariance``, ``concentration``); a component
    holding under ``min_share`` of the items is not a cluster (its items go to the most probable one
    that is). ``hdbscan``: density-based clusters of at least ``min_share`` of the items; items it
    calls noise go to the nearest cluster. Chosen on validation classes (docs/scene-clustering.md).
    """

    dims: int = UMAP_DIMS
    neighbours: int = UMAP_NEIGHBOURS
    partition: str = "dpgmm"
    covariance: str = "diag"
    concentration: float = 1.0 / 30
    min_share: float = MIN_WEIGHT

    def describe(self) -> dict[str, Any]:
        return {
            "umap": {"n_components": self.dims, "n_neighbors": self.neighbours, "metric": "cosine", "min_dist": 0.0},
            "partition": self.partition,
            **(
                {"covariance": self.covariance, "concentration": self.concentration}
                if self.partition == "dpgmm"
                else {}
            ),
            "min_share": self.min_share,
        }


DEFAULT_METHOD = SceneMethod()


def embed(features: np.ndarray, method: SceneMethod = DEFAULT_METHOD, seed: int = 0) -> np.ndarray:
    """UMAP of the L2-normalised vectors (cosine), seeded."""
    import umap

    n = len(features)
    if n < 3:
        raise ValueError(f"need at least 3 scenes to cluster, got {n}")
    return np.asarray(
        umap.UMAP(
            n_components=min(method.dims, n - 2),
            n_neighbors=min(method.neighbours, n - 1),
            min_dist=0.0,
            metric="cosine",
            random_state=seed,
        ).fit_transform(_unit(features))
    )


def partition(
    embedding: np.ndarray, method: SceneMethod = DEFAULT_METHOD, seed: int = 0, max_components: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster labels (0 = largest) and each item's membership probability."""
    n = len(embedding)
    if method.partition == "hdbscan":
        return _hdbscan(embedding, method)
    from sklearn.mixture import BayesianGaussianMixture

    gmm = BayesianGaussianMixture(
        n_components=min(max_components, n),
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=method.concentration,
        covariance_type=method.covariance,
        max_iter=1000,
        n_init=3,
        random_state=seed,
    ).fit(embedding)
    proba = gmm.predict_proba(embedding)
    raw = proba.argmax(axis=1)
    counts = np.bincount(raw, minlength=proba.shape[1])
    needed = math.ceil(method.min_share * n - 1e-9)  # in items: 7 of 25 means 7, whatever 7/25 rounds to
    kept = [c for c in np.unique(raw) if counts[c] >= needed] or [int(np.argmax(counts))]
    # items of negligible components go to their most probable kept component, or where that is
    # numerically nothing (far from every kept one), to the nearest kept mean
    restricted = proba[:, kept]
    chosen = restricted.argmax(axis=1)
    lost = restricted.sum(axis=1) < 1e-9
    if lost.any():
        d = np.linalg.norm(embedding[lost][:, None] - gmm.means_[kept][None], axis=-1)
        chosen[lost] = d.argmin(axis=1)
    order = np.argsort(-np.bincount(chosen, minlength=len(kept)), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    probs = restricted.max(axis=1) / np.maximum(restricted.sum(axis=1), 1e-12)
    probs[lost] = 0.0  # placed, but the mixture vouches for none of it
    return _compact(rank[chosen]), probs


def _hdbscan(embedding: np.ndarray, method: SceneMethod) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import HDBSCAN

    n = len(embedding)
    found = HDBSCAN(min_cluster_size=max(2, math.ceil(method.min_share * n - 1e-9)), copy=True).fit(embedding)
    labels, probs = found.labels_.copy(), found.probabilities_.copy()
    clusters = [c for c in np.unique(labels) if c >= 0]
    if not clusters:
        return np.zeros(n, np.int64), np.ones(n)
    centres = np.stack([embedding[labels == c].mean(axis=0) for c in clusters])
    noise = labels < 0
    if noise.any():  # every item belongs somewhere: noise goes to the nearest cluster, with low confidence
        d = np.linalg.norm(embedding[noise][:, None] - centres[None], axis=-1)
        labels[noise] = np.array(clusters)[d.argmin(axis=1)]
        probs[noise] = 0.0
    sizes = {c: int((labels == c).sum()) for c in clusters}
    rank = {c: i for i, c in enumerate(sorted(clusters, key=lambda c: -sizes[c]))}
    return np.array([rank[c] for c in labels]), probs


def _compact(labels: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse


def cluster_scenes(
    features: np.ndarray,
    seed: int = 0,
    max_components: int = 30,
    method: SceneMethod = DEFAULT_METHOD,
    min_cluster_size: int | None = None,
) -> SceneClusters:
    """UMAP, then a partition that infers K (``method``). ``min_cluster_size``: no cluster of fewer
    items (they join their most probable bigger one) — the knob an analyst understands."""
    if min_cluster_size is not None:
        from dataclasses import replace

        method = replace(method, min_share=max(method.min_share, min_cluster_size / max(len(features), 1)))
    embedding = embed(features, method, seed)
    labels, probs = partition(embedding, method, seed, max_components)
    k = int(labels.max()) + 1
    reps = {}
    for c in range(k):
        members = np.flatnonzero(labels == c)
        centre = embedding[members].mean(axis=0)
        reps[c] = int(members[np.argmin(np.linalg.norm(embedding[members] - centre, axis=1))])
    return SceneClusters(
        labels=labels, probabilities=probs, k=k, representatives=reps, embedding=embedding, method=method
    )


def clustering_scores(truth: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """ACC (Hungarian matching of clusters to classes), NMI and ARI."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    classes, t = np.unique(truth, return_inverse=True)
    clusters, c = np.unique(labels, return_inverse=True)
    table = np.zeros((len(clusters), len(classes)), np.int64)
    np.add.at(table, (c, t), 1)
    rows, cols = linear_sum_assignment(-table)
    return {
        "acc": float(table[rows, cols].sum() / len(truth)),
        "nmi": float(normalized_mutual_info_score(t, c)),
        "ari": float(adjusted_rand_score(t, c)),
    }


def read_labelled_folder(
    root: Path, classes: Sequence[str] | None = None, per_class: int | None = None, seed: int = 0
) -> tuple[list[Path], np.ndarray, list[str]]:
    """ImageFolder layout: root/<class>/<image>; optional class subset and per-class cap."""
    rng = np.random.default_rng(seed)
    names = sorted(d.name for d in root.iterdir() if d.is_dir())
    if classes is not None:
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise ValueError(f"unknown classes: {', '.join(unknown)}")
        names = [n for n in names if n in set(classes)]
    files: list[Path] = []
    labels: list[int] = []
    for i, name in enumerate(names):
        imgs = image_files(root / name)
        if per_class is not None and len(imgs) > per_class:
            imgs = sorted(rng.choice(np.array(imgs, dtype=object), per_class, replace=False).tolist())
        files += imgs
        labels += [i] * len(imgs)
    if not files:
        raise ValueError(f"no images under {root}")
    return files, np.array(labels), names
