"""Whole-scene clustering: one feature per image → UMAP → Dirichlet-process Gaussian mixture.

The method of Ray & Skurikhin (arXiv 2409.03938): features from a DINOv2 fine-tuned on a
labelled source set, a manifold projection to a few Euclidean dimensions, then a Bayesian
nonparametric mixture that infers the number of clusters and the memberships together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dinotiles.core.encoder import Encoder

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
FEATURES = ("cls", "mean", "both")
# Chosen on validation classes only (docs/scene-clustering.md, third run: 88 settings, 3 seeded class
# splits, best mean validation ACC 0.817, scene vectors the mean over four quarter turns, features of a
# 4-view × 4-epoch fine-tune): the consensus of 8 seeded runs of UMAP p = 8 / 15 neighbours + diagonal
# DP-GMM, components with no valley between them merged (0.6), cut at agreement 0.5. One run of the
# same (the paper's p) over-split (K 11–14 for 10 classes in the second run); the consensus keeps K 9–11.
UMAP_DIMS = 8  # p
UMAP_NEIGHBOURS = 15
MERGE = 0.6  # kept components join when the valley between them is no lower than 0.6 × the lower peak
MIN_WEIGHT = 0.01  # a component holding fewer of the items is not a cluster
RUNS = 8  # seeded UMAP + mixture runs pooled into one answer (one seed alone moves ACC by ±0.04)
AGREEMENT = 0.5  # two groups stay one while their scenes share a cluster in at least half the runs
CONSENSUS_MAX_ITEMS = 5000  # the co-association matrix is n² (5,000 items: 100 MB); above, one run
# an aerial scene has no up: a scene's vector is the mean over its four 90° rotations (unit vectors), so two
# images of one scene type taken in different orientations agree. Chosen on validation classes: split 0's
# UMAP + k-means ACC 0.688 → 0.785, probe 0.882 → 0.923 (docs/scene-clustering.md)
ROTATIONS = 4


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


def rotated(images: np.ndarray, quarter_turns: int) -> np.ndarray:
    """Images ([..., H, W]) turned by ``quarter_turns`` × 90° (a copy the encoder can take)."""
    return np.ascontiguousarray(np.rot90(images, k=quarter_turns, axes=(-2, -1)))


def rotation_mean(views: np.ndarray) -> np.ndarray:
    """[R, N, D] vectors of R rotations → [N, D]: the mean of their unit vectors."""
    return np.asarray(_unit(views).mean(axis=0), dtype=np.float32)


def folder_views(
    encoder: Encoder,
    files: Sequence[Path],
    window: int,
    feature: str = "cls",
    turns: Sequence[int] = (0,),
    batch: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """[len(turns), N, D]: scene vectors of image files (resized to the encoder's window), each turned
    by every quarter-turn count in ``turns``."""
    out = []
    for start in tqdm(range(0, len(files), batch), desc="scene features", unit="batch", disable=not progress):
        images = np.stack([load_image(p, window) for p in files[start : start + batch]])
        views = []
        for k in turns:
            patches, cls = encoder.features(rotated(images, k))
            views.append(scene_vector(patches, cls, feature))
        out.append(np.stack(views))
    return np.concatenate(out, axis=1).astype(np.float32)


def folder_features(
    encoder: Encoder,
    files: Sequence[Path],
    window: int,
    feature: str = "cls",
    rotations: int = ROTATIONS,
    batch: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """Scene vectors for image files: the mean over ``rotations`` quarter turns (1: as read)."""
    if not 1 <= rotations <= 4:
        raise ValueError(f"rotations must be 1 to 4, got {rotations}")
    views = folder_views(encoder, files, window, feature, range(rotations), batch, progress)
    return views[0] if rotations == 1 else rotation_mean(views)


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
    that is); with ``merge`` > 0, kept components whose union is still one mode are then merged (the
    density along the segment between their means never falls below ``merge`` × the lower of its two
    ends: Hennig's ridgeline idea, cheap in a few UMAP dimensions). ``hdbscan``: density-based clusters
    of at least ``min_share`` of the items; items it calls noise go to the nearest cluster. Chosen on
    validation classes (docs/scene-clustering.md).

    ``runs`` > 1: UMAP and the partition are run with ``runs`` seeds and the answers are pooled (a
    consensus): two items are together in the fraction of runs that put them in one cluster, and
    clusters are the groups whose average togetherness is at least ``agreement`` (average linkage cut
    there). One UMAP seed against another moves validation ACC by up to 0.1 on the same vectors; the
    consensus answers what the runs agree on.
    """

    dims: int = UMAP_DIMS
    neighbours: int = UMAP_NEIGHBOURS
    partition: str = "dpgmm"
    covariance: str = "diag"
    concentration: float = 1.0 / 30
    min_share: float = MIN_WEIGHT
    merge: float = MERGE
    runs: int = RUNS
    agreement: float = AGREEMENT

    def describe(self) -> dict[str, Any]:
        return {
            "umap": {"n_components": self.dims, "n_neighbors": self.neighbours, "metric": "cosine", "min_dist": 0.0},
            "partition": self.partition,
            **(
                {"covariance": self.covariance, "concentration": self.concentration, "merge": self.merge}
                if self.partition == "dpgmm"
                else {}
            ),
            "min_share": self.min_share,
            **({"consensus": {"runs": self.runs, "agreement": self.agreement}} if self.runs > 1 else {}),
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
    if method.merge > 0 and len(kept) > 1:
        parts = [Gaussian(gmm.weights_[c], gmm.means_[c], _full(gmm.covariances_[c])) for c in kept]
        group = np.array(unimodal_groups(parts, method.merge))
        chosen = group[chosen]
        restricted = np.stack([restricted[:, group == g].sum(axis=1) for g in range(group.max() + 1)], axis=1)
        kept = list(range(restricted.shape[1]))
    order = np.argsort(-np.bincount(chosen, minlength=len(kept)), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    probs = restricted.max(axis=1) / np.maximum(restricted.sum(axis=1), 1e-12)
    probs[lost] = 0.0  # placed, but the mixture vouches for none of it
    return _compact(rank[chosen]), probs


def scene_partition(
    features: np.ndarray,
    method: SceneMethod = DEFAULT_METHOD,
    seed: int = 0,
    max_components: int = 30,
    memo: dict[Any, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (0 = largest), each item's probability and the (first run's) UMAP embedding.

    With ``method.runs`` > 1 (and at most ``CONSENSUS_MAX_ITEMS`` items) the consensus of that many
    seeded runs; an item's probability is then the fraction of runs that put it with its cluster.
    ``memo`` (one per set of vectors) keeps embeddings and single runs for a sweep over methods."""
    memo = {} if memo is None else memo

    def run(r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = ("umap", method.dims, method.neighbours, seed + r)
        if key not in memo:
            memo[key] = embed(features, method, seed + r)
        single = (replace(method, runs=1, agreement=0.5), seed + r, max_components)
        if single not in memo:
            memo[single] = partition(memo[key], method, seed + r, max_components)
        return (*memo[single], memo[key])

    labels, probs, embedding = run(0)
    if method.runs <= 1 or len(features) > CONSENSUS_MAX_ITEMS:
        return labels, probs, embedding
    labels, probs = consensus([run(r)[0] for r in range(method.runs)], method.agreement, method.min_share)
    return labels, probs, embedding


def consensus(runs: Sequence[np.ndarray], agreement: float, min_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Pool several partitions of the same items: average linkage on 1 − (fraction of runs in which
    two items share a cluster), cut where the average togetherness falls below ``agreement``; groups
    under ``min_share`` of the items join the group they were most often with. Returns labels
    (0 = largest) and, per item, its mean togetherness with the rest of its group."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = len(runs[0])
    together = np.zeros((n, n), np.float32)
    for labels in runs:
        together += labels[:, None] == labels[None, :]
    together /= len(runs)
    if n < 2:
        return np.zeros(n, np.int64), np.ones(n)
    tree = linkage(squareform(1.0 - together, checks=False), method="average")
    groups = fcluster(tree, t=1.0 - agreement + 1e-6, criterion="distance") - 1
    sizes = np.bincount(groups)
    needed = math.ceil(min_share * n - 1e-9)
    big = [g for g in range(len(sizes)) if sizes[g] >= needed] or [int(np.argmax(sizes))]
    for g in range(len(sizes)):
        if g not in big and sizes[g]:
            members = groups == g
            groups[members] = big[int(np.argmax([together[np.ix_(members, groups == b)].mean() for b in big]))]
    order = np.argsort(-np.bincount(groups, minlength=len(sizes)), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    labels = _compact(rank[groups])
    same = labels[:, None] == labels[None, :]
    probs = ((together * same).sum(axis=1) - 1.0) / np.maximum(same.sum(axis=1) - 1, 1)
    probs[same.sum(axis=1) == 1] = 1.0  # a group of one agrees with itself
    return labels, np.clip(probs, 0.0, 1.0)


@dataclass(frozen=True)
class Gaussian:
    """One weighted mixture component (full covariance)."""

    weight: float
    mean: np.ndarray
    cov: np.ndarray

    def density(self, points: np.ndarray) -> np.ndarray:
        d = points.shape[1]
        chol = np.linalg.cholesky(self.cov + 1e-9 * np.eye(d))
        z = np.linalg.solve(chol, (points - self.mean).T)
        log_det = 2.0 * np.log(np.diag(chol)).sum()
        return np.asarray(self.weight * np.exp(-0.5 * (z**2).sum(axis=0) - 0.5 * (d * math.log(2 * math.pi) + log_det)))


def _full(cov: np.ndarray) -> np.ndarray:
    return np.diag(cov) if cov.ndim == 1 else cov


def ridge_ratio(a: Gaussian, b: Gaussian, steps: int = 41) -> float:
    """Lowest density of the pair on the segment between their means, over the lower of its two ends.

    Near 1: no valley between them, one mode; near 0: two modes (Hennig's ridgeline criterion, on the
    segment rather than the ridgeline curve: cheap, and the two agree for nearby components)."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    line = (1 - t) * a.mean + t * b.mean
    density = a.density(line) + b.density(line)
    return float(density.min() / max(min(density[0], density[-1]), 1e-300))


def unimodal_groups(parts: Sequence[Gaussian], threshold: float) -> list[int]:
    """Group index (0 … groups − 1) of each component: components join when the pair's valley is
    shallow (``ridge_ratio`` ≥ ``threshold``), transitively, so a curved or elongated class that the
    mixture tiled with several Gaussians becomes one cluster while a valley keeps two classes apart."""
    group = list(range(len(parts)))

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            if ridge_ratio(parts[i], parts[j]) >= threshold:
                group[root(j)] = root(i)
    roots = sorted({root(i) for i in range(len(parts))})
    return [roots.index(root(i)) for i in range(len(parts))]


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
        method = replace(method, min_share=max(method.min_share, min_cluster_size / max(len(features), 1)))
    labels, probs, embedding = scene_partition(features, method, seed, max_components)
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
