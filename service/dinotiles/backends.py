"""Which encoder backend serves: DINOTILES_ENCODER=auto|onnx|torch and DINOTILES_PRECISION.

Outside ``dinotiles.core`` because choosing torch imports it; the core never does.
``auto`` takes ONNX Runtime on its GPU provider when onnxruntime-gpu sees a GPU (the ``gpu``
image), else torch when it sees CUDA, else ONNX Runtime on the CPU.
"""

from __future__ import annotations

import logging

from dinotiles.core.bundle import Bundle
from dinotiles.core.encoder import Encoder, EncoderConfigError, has_gpu_provider
from dinotiles.core.inference import WindowEncoder

logger = logging.getLogger("dinotiles")
KINDS = ("auto", "onnx", "torch")


def choose_backend(kind: str) -> str:
    """``onnx`` or ``torch`` for a configured kind."""
    if kind not in KINDS:
        raise EncoderConfigError(f"encoder must be one of {KINDS}, not {kind!r}")
    if kind != "auto":
        return kind
    if has_gpu_provider():
        return "onnx"
    from dinotiles.torch_encoder import cuda_available

    return "torch" if cuda_available() else "onnx"


def open_encoder(
    bundle: Bundle,
    kind: str = "auto",
    precision: str = "fp32",
    providers: tuple[str, ...] = (),
    max_batch: int = 8,
    threads: int = 0,
) -> WindowEncoder:
    """The encoder a server, the CLI or a benchmark runs; a setting it cannot honour raises (exit 2)."""
    backend = choose_backend(kind)
    if backend == "torch":
        if providers:
            raise EncoderConfigError("DINOTILES_PROVIDERS applies to ONNX Runtime, not DINOTILES_ENCODER=torch")
        from dinotiles.torch_encoder import TorchEncoder

        encoder: WindowEncoder = TorchEncoder(bundle, precision)
    else:
        encoder = Encoder.for_bundle(bundle, providers, precision, max_batch, threads)
    logger.info("encoder: %s (%s)", backend, ", ".join(encoder.providers))
    return encoder
