"""ONNX Runtime: windows in, patch tokens (and cluster IDs) out, on whichever device is there."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dinotiles.core.bundle import Bundle, BundleError, Codebook
from dinotiles.core.timing import span

NODATA = 65535


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class EncoderConfigError(BundleError):
    """An encoder setting this installation cannot honour (a provider, a precision)."""


def pick_providers(wanted: tuple[str, ...] = ()) -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU, else CPU; an explicit list (TensorRT first, say) wins.

    TensorRT is never picked by default: it compiles an engine per input shape at start-up
    (minutes), which a platform team should choose knowingly (DINOTILES_PROVIDERS).
    """
    available = ort.get_available_providers()
    if wanted:
        missing = [p for p in wanted if p not in available]
        if missing:
            raise EncoderConfigError(f"ONNX Runtime providers {missing} are not available here (have {available})")
        return list(wanted)
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available]


def has_gpu_provider() -> bool:
    """Whether this ONNX Runtime build can run on a GPU (onnxruntime-gpu with CUDA present)."""
    return any(p in ort.get_available_providers() for p in GPU_PROVIDERS)


@dataclass(frozen=True)
class AssignmentTerms:
    """Nearest-centroid matching as plain linear algebra, shared by the ONNX graph and the torch backend.

    ``ids = argmax(f' @ centroids_t - bias)`` where f' is f, L2-normalised when ``normalize``, with the
    positional basis projected out (``projector``) and normalised again for cosine.
    """

    normalize: bool
    projector: np.ndarray | None  # (D, D)
    centroids_t: np.ndarray  # (D, K)
    bias: np.ndarray | None  # (K,) half squared norms for L2


def assignment_terms(codebook: Codebook) -> AssignmentTerms:
    c = codebook.centroids.astype(np.float32)
    cosine = codebook.metric == "cosine"
    if cosine:
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    projector = None
    if codebook.position_basis is not None and len(codebook.position_basis):
        basis = codebook.position_basis.astype(np.float32)
        projector = np.eye(basis.shape[1], dtype=np.float32) - basis.T @ basis
    bias = (0.5 * (c * c).sum(axis=1)).astype(np.float32) if codebook.metric == "l2" else None
    return AssignmentTerms(cosine, projector, np.ascontiguousarray(c.T), bias)


def nearest_centroids(terms: AssignmentTerms, features: np.ndarray) -> np.ndarray:
    """Features [N, D] → uint16 IDs [N] on the CPU with numpy: the same arithmetic as the ONNX graph.

    The engine assigns *blended* features (a patch seen by several windows) here, whatever backend
    encoded them, so every backend's tiles go through one matching step.
    """
    f = np.asarray(features, dtype=np.float32)
    if terms.normalize:
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    if terms.projector is not None:
        f = f @ terms.projector
        if terms.normalize:
            f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    scores = f @ terms.centroids_t
    if terms.bias is not None:
        scores = scores - terms.bias
    return np.asarray(scores.argmax(axis=1), dtype=np.uint16)


def assignment_graph(codebook: Codebook) -> bytes:
    """A tiny ONNX graph: features [N, D] → nearest centroid IDs [N].

    Centroids (pre-normalised for cosine, with squared norms for L2) are graph
    initializers, so they are loaded once onto the inference device. A codebook's
    positional basis (directions that encode where a patch sits in its window, not
    what it shows) is projected out first, as at build time.
    """
    terms = assignment_terms(codebook)
    nodes = []
    inits = []
    feats = "features"
    if terms.normalize:
        nodes.append(helper.make_node("LpNormalization", [feats], ["normed"], axis=1, p=2))
        feats = "normed"
    if terms.projector is not None:
        inits.append(numpy_helper.from_array(terms.projector, "projector"))
        nodes.append(helper.make_node("MatMul", [feats, "projector"], ["projected"]))
        feats = "projected"
        if terms.normalize:
            nodes.append(helper.make_node("LpNormalization", [feats], ["reprojected"], axis=1, p=2))
            feats = "reprojected"
    inits.append(numpy_helper.from_array(terms.centroids_t, "centroids_t"))
    nodes.append(helper.make_node("MatMul", [feats, "centroids_t"], ["scores"]))
    score = "scores"
    if terms.bias is not None:
        inits.append(numpy_helper.from_array(terms.bias, "half_norms"))
        nodes.append(helper.make_node("Sub", ["scores", "half_norms"], ["l2score"]))
        score = "l2score"
    nodes.append(helper.make_node("ArgMax", [score], ["ids"], axis=1, keepdims=0))
    graph = helper.make_graph(
        nodes,
        "assign",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", terms.centroids_t.shape[0]])],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _provider_options(
    providers: list[str], precision: str, window: int, max_batch: int, cache_dir: Path | None
) -> list[Any]:
    """Per-provider options: TensorRT gets fp16, an engine cache and one profile for batches 1..max_batch."""
    out: list[Any] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            shape = f"image:{{}}x3x{window}x{window}"
            opts: dict[str, Any] = {
                "trt_fp16_enable": precision == "fp16",
                "trt_profile_min_shapes": shape.format(1),
                "trt_profile_opt_shapes": shape.format(max_batch),
                "trt_profile_max_shapes": shape.format(max_batch),
            }
            if cache_dir is not None:
                opts |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir / "tensorrt")}
            out.append((name, opts))
        else:
            out.append(name)
    return out


def half_precision(model_path: Path) -> bytes:
    """The encoder graph in fp16 with fp32/uint8 inputs and outputs kept (ONNX Runtime's own converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True)
    return bytes(converted.SerializeToString())


class Encoder:
    """ONNX Runtime backend: owns the sessions (thread-safe); the assigner exists once a codebook does.

    ``precision="fp16"`` converts the graph's weights and activations to half precision at load
    (inputs and outputs stay as they are); it pays on GPUs, not on CPUs. bf16 is the torch
    backend's: ONNX Runtime has few bf16 kernels.
    """

    def __init__(
        self,
        model_path: Path,
        window: int,
        patch: int,
        codebook: Codebook | None,
        providers: tuple[str, ...] = (),
        precision: str = "fp32",
        max_batch: int = 8,
        cache_dir: Path | None = None,
        threads: int = 0,
    ) -> None:
        if precision not in ("fp32", "fp16"):
            raise EncoderConfigError(
                f"ONNX Runtime runs fp32 or fp16, not {precision!r} (bf16: DINOTILES_ENCODER=torch)"
            )
        self.providers = pick_providers(providers)
        self.precision = precision
        self.cache_tag = "" if precision == "fp32" else f"-{precision}"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no CPU arena: ORT's arena keeps a burst's peak for the process's life; without it large
        # buffers go back to the OS after each run (benchmarks/load.py measures RSS after a burst)
        options.enable_cpu_mem_arena = False
        if threads > 0:  # several encoders on one machine (Ray actors): each keeps to its share of the cores
            options.intra_op_num_threads = threads
        model: str | bytes = str(model_path)
        if precision == "fp16":
            model = half_precision(model_path)
        configured = _provider_options(self.providers, precision, window, max_batch, cache_dir)
        self.session = ort.InferenceSession(model, options, providers=configured)
        self.assigner = ort.InferenceSession(assignment_graph(codebook), providers=self.providers) if codebook else None
        self.grid = window // patch
        self.seconds = 0.0  # time spent in the encoder session, for benchmarks and /metrics

    @classmethod
    def for_bundle(
        cls,
        bundle: Bundle,
        providers: tuple[str, ...] = (),
        precision: str = "fp32",
        max_batch: int = 8,
        threads: int = 0,
    ) -> Encoder:
        if not bundle.model_path.exists():
            raise BundleError(f"{bundle.model_path} is missing: this bundle serves with DINOTILES_ENCODER=torch only")
        return cls(
            bundle.model_path,
            bundle.window,
            bundle.patch,
            bundle.codebook,
            providers,
            precision,
            max_batch,
            None,
            threads,
        )

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
