"""`dinotiles scenes eval`: the paper's protocol of heterogeneous transfer on a labelled folder.

Fine-tune on one half of the classes, cluster images of the other half (never seen in
training), and compare: base features + k-means with the true K; base + UMAP + DP-GMM;
fine-tuned + UMAP + DP-GMM. Scores: ACC (Hungarian), NMI, ARI, inferred K vs true K.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from dinotiles.core.encoder import Encoder
from dinotiles.scenes.cluster import FEATURES, cluster_scenes, clustering_scores, folder_features, read_labelled_folder
from dinotiles.training.exporter import write_bundle
from dinotiles.training.finetune import SIZE, FinetuneConfig, finetune
from dinotiles.training.weights import load_weights


def split_classes(data: Path, train: list[str] | None, seed: int) -> tuple[list[str], list[str]]:
    names = sorted(d.name for d in data.iterdir() if d.is_dir())
    if train is None:
        order = np.random.default_rng(seed).permutation(len(names))
        train = sorted(names[i] for i in order[: len(names) // 2])
    unknown = sorted(set(train) - set(names))
    if unknown:
        raise ValueError(f"unknown classes: {', '.join(unknown)}")
    return train, [n for n in names if n not in set(train)]


def scene_encoder(weights: str, out: Path) -> Encoder:
    """A 224 px, last-layer encoder bundle for scene images (exported once)."""
    if not (out / "model.onnx").exists():
        write_bundle(load_weights(weights), out, window=SIZE)
    return Encoder(out / "model.onnx", SIZE, 14, None)


def evaluate(
    data: Path,
    weights: str,
    out: Path,
    train_classes: list[str] | None = None,
    per_class: int | None = None,
    finetune_per_class: int | None = 150,
    epochs: int = 4,
    blocks: int = 2,
    seed: int = 0,
    views: int = 4,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    train, test = split_classes(data, train_classes, seed)
    started = time.time()
    report = finetune(
        FinetuneConfig(
            data=data,
            weights=weights,
            out=out / "finetune",
            classes=train,
            per_class=finetune_per_class,
            blocks=blocks,
            views=views,
            epochs=epochs,
            seed=seed,
        )
    )
    files, truth, _ = read_labelled_folder(data, test, per_class, seed)
    features: dict[str, dict[str, np.ndarray]] = {}
    for name, source in (("base", weights), ("finetuned", report["weights"])):
        cached = out / f"features_{name}.npy"
        if cached.exists() and np.load(cached).shape[0] == len(files):
            both = np.load(cached)
        else:
            both = folder_features(scene_encoder(source, out / f"bundle_{name}"), files, SIZE, feature="both")
            np.save(cached, both)
        half = both.shape[1] // 2
        features[name] = {"cls": both[:, :half], "mean": both[:, half:], "both": both}
    k_true = len(test)
    rows = []
    for feature in FEATURES:
        from sklearn.cluster import KMeans

        base = features["base"][feature]
        km = KMeans(n_clusters=k_true, n_init=10, random_state=seed).fit_predict(
            base / np.linalg.norm(base, axis=1, keepdims=True)
        )
        rows.append(
            {"method": "base + k-means (true K)", "feature": feature, "k": k_true, **clustering_scores(truth, km)}
        )
        for name, label in (("base", "base + UMAP + DP-GMM"), ("finetuned", "fine-tuned + UMAP + DP-GMM")):
            result = cluster_scenes(features[name][feature], seed=seed)
            rows.append({"method": label, "feature": feature, "k": result.k, **clustering_scores(truth, result.labels)})
    summary = {
        "data": str(data),
        "weights": weights,
        "train_classes": train,
        "test_classes": test,
        "true_k": k_true,
        "test_images": len(files),
        "finetune": {k: report[k] for k in ("images", "views", "blocks_trained", "history")},
        "results": rows,
        "seconds": round(time.time() - started, 1),
    }
    (out / "scenes_eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_table(summary: dict[str, Any]) -> str:
    lines = [
        f"true K = {summary['true_k']} (held-out classes), {summary['test_images']} images",
        f"{'method':30} {'feature':8} {'K':>3} {'ACC':>6} {'NMI':>6} {'ARI':>6}",
    ]
    for r in summary["results"]:
        lines.append(f"{r['method']:30} {r['feature']:8} {r['k']:>3} {r['acc']:6.3f} {r['nmi']:6.3f} {r['ari']:6.3f}")
    return "\n".join(lines)
