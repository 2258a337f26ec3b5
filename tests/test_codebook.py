"""Codebooks: built from real imagery through the runtime's windows, imported from the seed, checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dinotiles.core.bundle import BundleError, Codebook, load_bundle
from dinotiles.core.cache import ByteLRU
from dinotiles.core.encoder import NODATA, Encoder, assignment_graph
from dinotiles.core.engine import ClusterEngine
from dinotiles.training.codebook import build, import_seed, position_basis, project, tsne_colors
from tests.conftest import SHARED, open_cluster


@pytest.mark.slow
def test_build_small_codebook(bundle, sample: Path, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    meta = build([sample], bundle.root, k=8, max_patches=3000, seed=1, out=tmp_path, position_dirs=4)
    centroids = np.load(tmp_path / "centroids.npy")
    basis = np.load(tmp_path / "position_basis.npy")
    assert basis.shape == (4, 384) and np.allclose(basis @ basis.T, np.eye(4), atol=1e-4)
    assert meta["position_dirs"] == 4
    colors = np.load(tmp_path / "colors.npy")
    assert centroids.shape == (8, 384) and colors.shape == (8, 3) and colors.dtype == np.uint8
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-4)
    assert meta["metric"] == "cosine" and 0 < meta["patches_sampled"] <= 3000
    assert (colors.min(axis=0) == 0).all() and (colors.max(axis=0) == 255).all()
    assert len({tuple(c) for c in colors}) == 8
    # the built codebook serves: the bundle loads with it and assigns every cluster somewhere
    loaded = load_bundle(bundle.root, codebook_dir=tmp_path)
    assert loaded.codebook.k == 8
    # the server's path (windows → encoder → assignment graph, positional basis removed) over the
    # whole build image, a superset of the sampled patches k-means saw: all 8 ids must occur
    engine = ClusterEngine(loaded, Encoder.for_bundle(loaded), ByteLRU(0))
    with open_cluster(engine, settings, str(sample)) as src:
        grid = src.view.grid
        ids = engine.mosaic(src.view, 0, grid.rows, 0, grid.cols)
    valid = ids[ids != NODATA]
    assert valid.size > 0.5 * ids.size
    counts = np.bincount(valid, minlength=8)
    assert counts.shape == (8,) and (counts > 0).all(), counts


def test_tsne_colours_keep_neighbours_close() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(rng.normal(size=(4, 16)) * 10, 8, axis=0) + rng.normal(size=(32, 16)) * 0.1
    colors = tsne_colors(groups.astype(np.float32)).astype(float)
    within = np.mean(
        [
            np.linalg.norm(colors[i] - colors[j])
            for g in range(4)
            for i in range(g * 8, g * 8 + 8)
            for j in range(g * 8, g * 8 + 8)
            if i < j
        ]
    )
    across = np.mean([np.linalg.norm(colors[i] - colors[j]) for i in range(32) for j in range(32) if i // 8 != j // 8])
    assert within < across / 2


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_assignment_graph_matches_numpy(metric: str) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    centroids = rng.normal(size=(50, 16)).astype(np.float32) * rng.uniform(0.5, 3, (50, 1)).astype(np.float32)
    feats = rng.normal(size=(400, 16)).astype(np.float32) * 2
    cb = Codebook(centroids=centroids, colors=np.zeros((50, 3), np.uint8), metric=metric, manifest={})
    ids = ort.InferenceSession(assignment_graph(cb)).run(None, {"features": feats})[0]
    if metric == "cosine":
        unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        expected = np.argmax(feats @ unit.T, axis=1)
    elif metric == "ip":
        expected = np.argmax(feats @ centroids.T, axis=1)
    else:
        expected = np.argmin(((feats[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (ids == expected).mean() == 1.0


def test_positional_projection_same_at_build_and_serve() -> None:
    """The server's assignment graph removes the positional basis exactly as the build did."""
    rng = np.random.default_rng(5)
    means = rng.normal(size=(676, 32)) + np.outer(np.linspace(-3, 3, 676), rng.normal(size=32))
    basis = position_basis(means, 3)
    feats = rng.normal(size=(300, 32)).astype(np.float32)
    centroids = project(rng.normal(size=(20, 32)).astype(np.float32), basis)
    cb = Codebook(
        centroids=centroids, colors=np.zeros((20, 3), np.uint8), metric="cosine", manifest={}, position_basis=basis
    )
    import onnxruntime as ort

    ids = ort.InferenceSession(assignment_graph(cb)).run(None, {"features": feats})[0]
    assert (ids == np.argmax(project(feats, basis) @ centroids.T, axis=1)).all()
    # the dominant positional direction is found and removed
    trend = np.linalg.svd(means - means.mean(0), full_matrices=False)[2][0]
    assert abs(float(basis[0] @ trend)) > 0.99
    assert np.abs(project(feats, basis) @ basis.T).max() < 1e-5


def test_codebook_for_other_weights_is_refused(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "bundle"
    shutil.copytree(bundle.root, other, ignore=shutil.ignore_patterns("model.onnx"))
    (other / "model.onnx").symlink_to(bundle.model_path)
    meta = json.loads((other / "codebook.json").read_text())
    meta["weights_sha256"] = "0" * 64
    (other / "codebook.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError) as err:
        load_bundle(other)
    message = str(err.value)
    assert "weights_sha256" in message and "0000" in message and "\n" not in message


@pytest.mark.slow
def test_seed_import_records_and_honours_inner_product(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seed_colors = SHARED / "seed" / "color_map_rgb_6k.npy"
    if not seed_colors.exists():
        pytest.skip(f"seed colour map not found at {seed_colors}")
    target = tmp_path / "bundle"
    shutil.copytree(bundle.root, target, ignore=shutil.ignore_patterns("model.onnx", "codebook.json"))
    (target / "model.onnx").symlink_to(bundle.model_path)
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(6144, 384)).astype(np.float32) * rng.uniform(0.2, 5, (6144, 1)).astype(np.float32)
    np.save(tmp_path / "centroids_6k.npy", centroids)
    meta = import_seed(tmp_path / "centroids_6k.npy", seed_colors, target)
    assert meta["metric"] == "ip" and meta["k"] == 6144
    loaded = load_bundle(target)
    assert loaded.codebook.metric == "ip"
    encoder = Encoder.for_bundle(loaded)
    feats = rng.normal(size=(200, 384)).astype(np.float32)
    assert (encoder.assign(feats) == np.argmax(feats @ centroids.T, axis=1)).all()
    assert (loaded.codebook.colors == np.load(seed_colors)).all()


def test_seed_import_wrong_dimension_is_clear(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    np.save(tmp_path / "c.npy", np.zeros((6144, 768), np.float32))
    np.save(tmp_path / "rgb.npy", np.zeros((6144, 3), np.uint8))
    with pytest.raises(BundleError, match="768"):
        import_seed(tmp_path / "c.npy", tmp_path / "rgb.npy", bundle.root)


def test_shipped_codebook_matches_demo_weights(bundle) -> None:  # type: ignore[no-untyped-def]
    from dinotiles.training.demo import DEFAULT_CODEBOOK

    meta = json.loads((DEFAULT_CODEBOOK / "codebook.json").read_text())
    size = sum(p.stat().st_size for p in DEFAULT_CODEBOOK.iterdir())
    assert size <= 5 * 1024 * 1024
    assert 256 <= meta["k"] <= 2048
    assert meta["weights_sha256"] == bundle.manifest["weights"]["sha256"]
    assert bundle.codebook.k == meta["k"]
