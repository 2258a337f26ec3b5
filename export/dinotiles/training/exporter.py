"""Weights → ONNX encoder: uint8 RGB in, patch tokens and CLS out, one fixed window size.

The position embedding is interpolated once in torch for the chosen window and
baked in as a constant, so the graph holds no bicubic Resize and every window
sees exactly the same embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dinotiles.training.weights import LoadedWeights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPSET = 17


def feature_layer_name(model: Any, block: int | None) -> str:
    """How bundle.json names the patch features: the last output, or block N's output + final LayerNorm."""
    if block is None or block == model.config.num_hidden_layers:
        return "last_hidden_state"
    return f"block{block}+layernorm"


def block_from_name(name: str) -> int | None:
    """Inverse of feature_layer_name: "block8+layernorm" → 8, "last_hidden_state" → None."""
    return int(name.removeprefix("block").split("+")[0]) if name.startswith("block") else None


def build_wrapper(model: Any, window: int, block: int | None = None) -> Any:
    """A torch module: uint8 NCHW window → (patch tokens [B, N, D], CLS [B, D]).

    ``block`` picks an intermediate block's tokens (with the final LayerNorm, as
    DINOv2's get_intermediate_layers(norm=True)); the blocks after it are dropped
    from a copy of the model, so they cost nothing, and CLS comes from that block too.
    """
    import copy

    import torch

    layers = model.config.num_hidden_layers
    if block is not None and not 1 <= block <= layers:
        raise ValueError(f"feature layer must be between 1 and {layers}, got {block}")
    if block is not None and block < layers:
        model = copy.deepcopy(model)
        model.encoder.layer = model.encoder.layer[:block]

    patch = model.config.patch_size
    if window % patch:
        raise ValueError(f"window {window} is not a multiple of the patch size {patch}")
    registers = int(getattr(model.config, "num_register_tokens", 0) or 0)
    embeddings = model.embeddings
    with torch.no_grad():
        dummy = torch.zeros(1, 1 + (window // patch) ** 2, model.config.hidden_size)
        pos = embeddings.interpolate_pos_encoding(dummy, window, window).detach().clone()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("pos", pos)
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = (image.float() - self.mean) / self.std  # type: ignore[operator]
            # the baked embedding replaces the interpolation only while this module runs
            embeddings.interpolate_pos_encoding = lambda emb, h, w: self.pos
            try:
                hidden = self.model(pixel_values=x).last_hidden_state
            finally:
                del embeddings.interpolate_pos_encoding
            return hidden[:, 1 + registers :], hidden[:, 0]

    return Encoder().eval()


def export_onnx(weights: LoadedWeights, out: Path, window: int, block: int | None = None) -> Path:
    """Export with the legacy TorchScript exporter (dynamic batch, opset 17)."""
    import torch

    wrapper = build_wrapper(weights.model, window, block)
    dummy = torch.zeros(1, 3, window, window, dtype=torch.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    torch.onnx.export(
        wrapper,
        (dummy,),
        str(tmp),
        input_names=["image"],
        output_names=["patch_tokens", "cls_token"],
        dynamic_axes={"image": {0: "batch"}, "patch_tokens": {0: "batch"}, "cls_token": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    tmp.replace(out)
    return out


def export_torch(weights: LoadedWeights, out: Path, window: int, block: int | None = None) -> Path:
    """The network the ONNX graph holds, as a Hugging Face directory the torch backend loads.

    Blocks after the feature layer are dropped and the position embedding is stored already
    interpolated to the window (``image_size`` = window), so transformers never resamples it at
    run time and the two backends add the very same embedding.
    """
    import copy

    import torch

    model = copy.deepcopy(weights.model)
    layers = model.config.num_hidden_layers
    if block is not None and block < layers:
        model.encoder.layer = model.encoder.layer[:block]
        layers = block
    patch = model.config.patch_size
    with torch.no_grad():
        dummy = torch.zeros(1, 1 + (window // patch) ** 2, model.config.hidden_size)
        pos = model.embeddings.interpolate_pos_encoding(dummy, window, window).detach().clone()
    model.embeddings.position_embeddings = torch.nn.Parameter(pos)
    # a fresh config: the backbone fields (stage names, out_features) must follow the new depth
    fields = model.config.to_dict()
    for stale in ("out_features", "out_indices", "stage_names"):
        fields.pop(stale, None)
    model.config = type(model.config).from_dict({**fields, "num_hidden_layers": layers, "image_size": window})
    tmp = out.with_name(out.name + ".part")
    model.save_pretrained(str(tmp), safe_serialization=True)
    for path in tmp.iterdir():
        path.chmod(0o644)  # transformers writes the weights 0600: a server running as another user must read them
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.replace(out)
    return out


def torch_manifest(directory: Path) -> dict[str, Any]:
    """bundle.json's ``torch`` entry: where the backend's weights are and their digest."""
    return {"dir": directory.name, "sha256": _sha(directory / "model.safetensors")}


def torch_features(
    weights: LoadedWeights, window: int, images: np.ndarray, block: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reference forward in torch, for parity checks."""
    import torch

    wrapper = build_wrapper(weights.model, window, block)
    with torch.no_grad():
        patches, cls = wrapper(torch.from_numpy(images))
    return patches.numpy(), cls.numpy()


def write_bundle(weights: LoadedWeights, out: Path, window: int = 448, block: int | None = None) -> dict[str, Any]:
    """model.onnx + bundle.json; the codebook is added by `dinotiles codebook build|import`."""
    import json

    import torch
    import transformers

    from dinotiles.core.bundle import BUNDLE_FORMAT

    model_path = export_onnx(weights, out / "model.onnx", window, block)
    torch_dir = export_torch(weights, out / "torch", window, block)
    manifest = {
        "format": BUNDLE_FORMAT,
        "weights": {"source": weights.source, "sha256": weights.sha256},
        "variant": weights.variant,
        "patch_size": int(weights.model.config.patch_size),
        "window_size": window,
        "feature_layer": feature_layer_name(weights.model, block),
        "embed_dim": int(weights.model.config.hidden_size),
        "num_register_tokens": int(getattr(weights.model.config, "num_register_tokens", 0) or 0),
        "target_gsd": 0.25,
        "input": "uint8 RGB NCHW, ImageNet normalisation inside the graph",
        "outputs": ["patch_tokens [B, N, D]", "cls_token [B, D]"],
        "exporter": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "opset": OPSET,
            "dynamo": False,
        },
        "model_sha256": _sha(model_path),
        "torch": torch_manifest(torch_dir),  # the torch backend's weights (DINOTILES_ENCODER=torch)
    }
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _sha(path: Path) -> str:
    from dinotiles.training.weights import sha256_file

    return sha256_file(path)
