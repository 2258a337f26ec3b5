"""The torch backend: the bundle's own weights in PyTorch (CUDA, bf16/fp16, scaled-dot-product attention).

Why a second backend: on a GPU node with torch but no onnxruntime-gpu, and for bf16, which ONNX
Runtime barely supports. The bundle carries a Hugging Face directory (``torch/``) of exactly the
network the ONNX graph holds: the blocks up to the feature layer, with the position embedding
already interpolated to the window, so no resampling happens at run time and both backends see
the same embedding. Normalisation, token slicing and nearest-centroid matching mirror the ONNX
graphs (the matching uses the same ``assignment_terms``); features and IDs are compared in tests.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dinotiles.core.bundle import Bundle, BundleError
from dinotiles.core.encoder import EncoderConfigError, assignment_terms
from dinotiles.core.timing import span

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DTYPES = ("fp32", "bf16", "fp16")


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def cuda_available() -> bool:
    if not torch_available():
        return False
    import torch

    return bool(torch.cuda.is_available())


class TorchEncoder:
    """Windows in, patch features or cluster IDs out, on CUDA when there (else CPU)."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", device: str | None = None) -> None:
        if not torch_available():
            raise EncoderConfigError(
                "DINOTILES_ENCODER=torch needs torch and transformers (pip install 'dinotiles[torch]')"
            )
        import torch
        from transformers import AutoModel

        if precision not in DTYPES:
            raise EncoderConfigError(f"precision must be one of {DTYPES}, not {precision!r}")
        spec = bundle.manifest.get("torch")
        directory = bundle.root / (spec or {}).get("dir", "torch")
        if not spec or not (directory / "config.json").exists():
            raise BundleError(
                f"the bundle at {bundle.root} carries no torch weights (torch/): re-export it with "
                "`dinotiles export` or `dinotiles demo`, or use DINOTILES_ENCODER=onnx"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.precision = precision
        self.cache_tag = "" if precision == "fp32" else f"-{precision}"
        model = AutoModel.from_pretrained(str(directory), attn_implementation="sdpa", dtype=self.dtype)
        self.model = model.to(self.device).eval()
        self.registers = int(bundle.manifest.get("num_register_tokens", 0) or 0)
        self.grid = bundle.window // bundle.patch
        self.providers = [f"torch:{self.device.type}:{precision}"]
        self.seconds = 0.0
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(shape) * 255.0
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(shape) * 255.0
        terms = assignment_terms(bundle.codebook)
        as_tensor = lambda a: None if a is None else torch.from_numpy(a).to(self.device)  # noqa: E731
        self.terms = (terms.normalize, as_tensor(terms.projector), as_tensor(terms.centroids_t), as_tensor(terms.bias))

    def _forward(self, images: np.ndarray) -> tuple[Any, Any]:
        import torch

        start = time.perf_counter()
        with span("encode"), torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).to(self.device, non_blocking=True)
            x = ((x.float() - self.mean) / self.std).to(self.dtype)
            hidden = self.model(pixel_values=x).last_hidden_state.float()
            patches = hidden[:, 1 + self.registers :].reshape(len(images), self.grid, self.grid, -1)
            cls = hidden[:, 0]
        self.seconds += time.perf_counter() - start
        return patches, cls

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [B, 3, W, W] → patch tokens [B, g, g, D], CLS [B, D] (float32)."""
        patches, cls = self._forward(images)
        return patches.cpu().numpy(), cls.cpu().numpy()

    def cluster_ids(self, images: np.ndarray) -> np.ndarray:
        """uint8 windows → cluster IDs per patch [B, g, g]; matching stays on the device."""
        import torch

        patches, _ = self._forward(images)
        normalize, projector, centroids_t, bias = self.terms
        with span("assign"), torch.inference_mode():
            f = patches.reshape(-1, patches.shape[-1])
            if normalize:
                f = torch.nn.functional.normalize(f, dim=1)
            if projector is not None:
                f = f @ projector
                if normalize:
                    f = torch.nn.functional.normalize(f, dim=1)
            scores = f @ centroids_t
            if bias is not None:
                scores = scores - bias
            ids = scores.argmax(dim=1).to(torch.int32)
        return ids.cpu().numpy().astype(np.uint16).reshape(patches.shape[:-1])
