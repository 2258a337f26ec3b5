"""Whole-scene clustering: one feature per image → UMAP → Dirichlet-process Gaussian mixture.

The method of Ray & Skurikhin (arXiv 2409.03938): features from a DINOv2 fine-tuned on a
labelled source set, a manifold projection to a few Euclidean dimensions, then a Bayesian
nonparametric mixture that infers the number of clusters and the memberships together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dinotiles.core.encoder import Encoder

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
FEATURES = ("cls", "mean", "both")
UMAP_DIMS = 8  # p: low enough for a full-covariance mixture, high enough to keep clusters apart
UMAP_NEIGHBOURS = 15  # umap-learn's default: local structure of ~15 images
MIN_WEIGHT = 0.01  # a component with less of the mixture weight is not a cluster


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

    def as_dict(self, names: Sequence[str]) -> dict[str, Any]:
        return {
            "k": self.k,
            "items": [
                {"id": names[i], "cluster": int(c), "probability": float(p)}
                for i, (c, p) in enumerate(zip(self.labels, self.probabilities, strict=True))
            ],
            "representatives": {str(c): names[i] for c, i in sorted(self.representatives.items())},
            "method": {
                "umap": {"n_components": UMAP_DIMS, "n_neighbors": UMAP_NEIGHBOURS, "metric": "cosine"},
                "mixture": "BayesianGaussianMixture, dirichlet_process prior",
            },
        }


def cluster_scenes(features: np.ndarray, seed: int = 0, max_components: int = 30) -> SceneClusters:
    """UMAP to ``UMAP_DIMS`` then a DP-GMM; K = components that hold at least ``MIN_WEIGHT``."""
    import umap
    from sklearn.mixture import BayesianGaussianMixture

    n = len(features)
    if n < 3:
        raise ValueError(f"need at least 3 scenes to cluster, got {n}")
    dims = min(UMAP_DIMS, n - 2)
    embedding = umap.UMAP(
        n_components=dims,
        n_neighbors=min(UMAP_NEIGHBOURS, n - 1),
        min_dist=0.0,
        metric="cosine",
        random_state=seed,
    ).fit_transform(_unit(features))
    gmm = BayesianGaussianMixture(
        n_components=min(max_components, n),
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=1.0 / max_components,
        covariance_type="diag",  # full covariances over-split small clusters (36 parameters each in 8-D)
        max_iter=1000,
        n_init=3,
        random_state=seed,
    ).fit(embedding)
    proba = gmm.predict_proba(embedding)
    raw = proba.argmax(axis=1)
    kept = [c for c in np.unique(raw) if gmm.weights_[c] >= MIN_WEIGHT]
    relabel = {c: i for i, c in enumerate(sorted(kept, key=lambda c: -gmm.weights_[c]))}
    # items of negligible components go to their most probable kept component
    restricted = proba[:, kept]
    labels = np.array([relabel[kept[j]] for j in restricted.argmax(axis=1)])
    probs = restricted.max(axis=1) / np.maximum(restricted.sum(axis=1), 1e-12)
    reps = {}
    for c in range(len(kept)):
        members = np.flatnonzero(labels == c)
        centre = embedding[members].mean(axis=0)
        reps[c] = int(members[np.argmin(np.linalg.norm(embedding[members] - centre, axis=1))])
    return SceneClusters(labels=labels, probabilities=probs, k=len(kept), representatives=reps, embedding=embedding)


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
