"""ONNX Runtime: windows in, patch tokens (and cluster IDs) out, on whichever device is there."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dinotiles.core.bundle import Bundle, Codebook
from dinotiles.core.timing import span

NODATA = 65535


def pick_providers(wanted: tuple[str, ...] = ()) -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU, else CPU; an explicit list wins."""
    available = ort.get_available_providers()
    if wanted:
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ValueError(f"providers {missing} not available (have {available})")
        return list(wanted)
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available]


def assignment_graph(codebook: Codebook) -> bytes:
    """A tiny ONNX graph: features [N, D] → nearest centroid IDs [N].

    Centroids (pre-normalised for cosine, with squared norms for L2) are graph
    initializers, so they are loaded once onto the inference device. A codebook's
    positional basis (directions that encode where a patch sits in its window, not
    what it shows) is projected out first, as at build time.
    """
    c = codebook.centroids.astype(np.float32)
    nodes = []
    inits = []
    feats = "features"
    if codebook.metric == "cosine":
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        nodes.append(helper.make_node("LpNormalization", [feats], ["normed"], axis=1, p=2))
        feats = "normed"
    if codebook.position_basis is not None and len(codebook.position_basis):
        basis = codebook.position_basis.astype(np.float32)
        projector = np.eye(basis.shape[1], dtype=np.float32) - basis.T @ basis
        inits.append(numpy_helper.from_array(projector, "projector"))
        nodes.append(helper.make_node("MatMul", [feats, "projector"], ["projected"]))
        feats = "projected"
        if codebook.metric == "cosine":
            nodes.append(helper.make_node("LpNormalization", [feats], ["reprojected"], axis=1, p=2))
            feats = "reprojected"
    inits.append(numpy_helper.from_array(np.ascontiguousarray(c.T), "centroids_t"))
    nodes.append(helper.make_node("MatMul", [feats, "centroids_t"], ["scores"]))
    score = "scores"
    if codebook.metric == "l2":
        half_norms = 0.5 * (c * c).sum(axis=1)
        inits.append(numpy_helper.from_array(half_norms.astype(np.float32), "half_norms"))
        nodes.append(helper.make_node("Sub", ["scores", "half_norms"], ["l2score"]))
        score = "l2score"
    nodes.append(helper.make_node("ArgMax", [score], ["ids"], axis=1, keepdims=0))
    graph = helper.make_graph(
        nodes,
        "assign",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", c.shape[1]])],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


class Encoder:
    """Owns the ONNX sessions (thread-safe); the assigner exists once a codebook does."""

    def __init__(
        self, model_path: Path, window: int, patch: int, codebook: Codebook | None, providers: tuple[str, ...] = ()
    ) -> None:
        self.providers = pick_providers(providers)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no CPU arena: ORT's arena keeps a burst's peak for the process's life; without it large
        # buffers go back to the OS after each run (benchmarks/load.py measures RSS after a burst)
        options.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(str(model_path), options, providers=self.providers)
        self.assigner = ort.InferenceSession(assignment_graph(codebook), providers=self.providers) if codebook else None
        self.grid = window // patch
        self.seconds = 0.0  # time spent in the encoder session, for benchmarks and /healthz

    @classmethod
    def for_bundle(cls, bundle: Bundle, providers: tuple[str, ...] = ()) -> Encoder:
        return cls(bundle.model_path, bundle.window, bundle.patch, bundle.codebook, providers)

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [B, 3, W, W] → patch tokens [B, g, g, D], CLS [B, D]."""
        start = time.perf_counter()
        with span("encode"):
            patches, cls = self.session.run(None, {"image": np.ascontiguousarray(images, dtype=np.uint8)})
        self.seconds += time.perf_counter() - start
        b = images.shape[0]
        return patches.reshape(b, self.grid, self.grid, -1), cls

    def assign(self, features: np.ndarray) -> np.ndarray:
        """Features [..., D] → uint16 cluster IDs [...]."""
        if self.assigner is None:
            raise RuntimeError("this encoder was opened without a codebook")
        flat = features.reshape(-1, features.shape[-1]).astype(np.float32, copy=False)
        with span("assign"):
            ids: Any = self.assigner.run(None, {"features": flat})[0]
        return np.asarray(ids, dtype=np.uint16).reshape(features.shape[:-1])

    def cluster_ids(self, images: np.ndarray) -> np.ndarray:
        """uint8 windows → cluster IDs per patch [B, g, g]."""
        patches, _ = self.features(images)
        return self.assign(patches)
