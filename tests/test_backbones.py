"""Backbones: every registry entry builds and returns the right features; weights load."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from datus.backbones import (
    BackboneError,
    WeightsError,
    build_backbone,
    get_backbone_spec,
    list_backbones,
)
from tests.conftest import CONF_DIR, PROJECT_ROOT

PAPER_BACKBONES = [
    "dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8",
    "dinov2_vits14", "dinov2_vitb14", "mocov2_r50",
]


def test_registry_lists_every_backbone_and_each_has_a_config():
    names = list_backbones()
    assert set(PAPER_BACKBONES) <= set(names)
    for name in names:
        assert (CONF_DIR / "backbone" / f"{name}.yaml").is_file(), name


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="backbone.name='vit_huge'.*dino_vits16"):
        get_backbone_spec("vit_huge")


@pytest.mark.parametrize("name", sorted(set(PAPER_BACKBONES) | {"tiny_vit"}))
def test_every_backbone_builds_and_returns_features_on_non_square_images(name):
    backbone = build_backbone(name, weights="random")
    p = backbone.patch_size
    assert p == get_backbone_spec(name).patch_size
    images = torch.rand(2, 3, 2 * p, 3 * p)
    out = backbone(backbone.normalize(images))
    assert out.grid == (2, 3)
    assert out.tokens.shape == (2, 6, backbone.embed_dim)
    assert out.cls.shape == (2, backbone.embed_dim)
    assert torch.isfinite(out.tokens).all()
    if name == "mocov2_r50":
        assert out.keys is None and out.attentions is None
        assert torch.allclose(out.cls, out.tokens.mean(1))
        with pytest.raises(BackboneError, match="tokens"):
            out.features("keys")
    else:
        for feature in ("keys", "queries", "values"):
            assert out.features(feature).shape == (2, 6, backbone.embed_dim)
        assert out.attentions.shape == (2, backbone.num_heads, 6)
        assert (out.attentions >= 0).all() and (out.attentions.sum(-1) <= 1 + 1e-5).all()
    assert out.feature_map("tokens").shape == (2, backbone.embed_dim, 2, 3)


def test_input_that_is_not_a_multiple_of_the_patch_size_is_refused():
    backbone = build_backbone("tiny_vit")
    with pytest.raises(BackboneError, match="multiple of the patch size 8"):
        backbone(torch.rand(1, 3, 60, 64))
    with pytest.raises(BackboneError, match=r"\(B, 3, H, W\)"):
        backbone(torch.rand(3, 64, 64))


def test_the_configs_take_the_patch_size_from_the_registry(tmp_path):
    """One source of truth: resize.patch_size resolves to the registry's value for every backbone config."""
    from datus.backbones import get_backbone_spec
    from tests.conftest import CONF_DIR, compose_config

    for path in sorted((CONF_DIR / "backbone").glob("*.yaml")):
        assert "patch_size" not in path.read_text() and "embed_dim" not in path.read_text(), path
        cfg = compose_config("discover", [f"backbone={path.stem}"], tmp_path)
        assert cfg.resize.patch_size == get_backbone_spec(cfg.backbone.name).patch_size
    with pytest.raises(Exception, match="backbone.name='vit_huge' is unknown"):
        compose_config("discover", ["backbone.name=vit_huge"], tmp_path).resize.patch_size  # noqa: B018


def _timm_reference(backbone, images):
    """Tokens and last-block attention computed by timm's own (non-fused) code path."""
    vit = backbone.model
    attn_module = vit.blocks[-1].attn
    captured = {}
    handle = attn_module.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("attn", o))
    fused, attn_module.fused_attn = attn_module.fused_attn, False
    try:
        with torch.no_grad():
            tokens = vit.forward_features(images)
    finally:
        attn_module.fused_attn = fused
        handle.remove()
    return tokens, captured["attn"]


def test_vit_features_equal_timms_forward_at_native_size():
    torch.manual_seed(0)
    backbone = build_backbone("tiny_vit")
    images = torch.randn(2, 3, 64, 64)  # the stored grid: no interpolation
    out = backbone(images)
    ref_tokens, ref_attn = _timm_reference(backbone, images)
    assert torch.allclose(out.tokens, ref_tokens[:, 1:], atol=1e-5)
    assert torch.allclose(out.cls, ref_tokens[:, 0], atol=1e-5)
    assert torch.allclose(out.attentions, ref_attn[:, :, 0, 1:], atol=1e-6)


def test_keys_are_the_key_third_of_the_last_blocks_qkv():
    torch.manual_seed(0)
    backbone = build_backbone("tiny_vit")
    images = torch.randn(1, 3, 64, 64)
    out = backbone(images)
    vit = backbone.model
    with torch.no_grad():
        x = backbone._embed(images, (8, 8))
        for block in vit.blocks[:-1]:
            x = block(x)
        qkv = vit.blocks[-1].attn.qkv(vit.blocks[-1].norm1(x))
    q, k, v = qkv[:, 1:].chunk(3, dim=-1)
    assert torch.allclose(out.queries, q, atol=1e-6)
    assert torch.allclose(out.keys, k, atol=1e-6)
    assert torch.allclose(out.values, v, atol=1e-6)


def test_non_square_position_embeddings_are_interpolated_like_timm_when_antialiased():
    torch.manual_seed(0)
    backbone = build_backbone("tiny_vit", pos_antialias=True)
    images = torch.randn(1, 3, 48, 96)
    ref_tokens, _ = _timm_reference(backbone, images)
    assert torch.allclose(backbone(images).tokens, ref_tokens[:, 1:], atol=1e-5)
    plain = build_backbone("tiny_vit")
    plain.load_state_dict(backbone.state_dict())
    assert not torch.allclose(plain(images).tokens, ref_tokens[:, 1:], atol=1e-3)


def test_hook_is_registered_once_not_per_image():
    backbone = build_backbone("tiny_vit")
    qkv = backbone.model.blocks[-1].attn.qkv
    for _ in range(3):
        backbone(torch.rand(1, 3, 64, 64))
    assert len(qkv._forward_hooks) == 1


def test_backbone_is_frozen_and_in_eval_mode():
    backbone = build_backbone("tiny_vit")
    assert not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())


# --- local checkpoints in their official layouts ------------------------------------------


def _same_outputs(a, b, size):
    torch.manual_seed(1)
    images = torch.randn(1, 3, size, size)
    return torch.allclose(a(images).tokens, b(images).tokens, atol=1e-6)


def test_official_dino_training_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("dino_vits16")
    sd = source.model.state_dict()
    teacher = {f"backbone.{k}": v for k, v in sd.items()}
    teacher["head.mlp.0.weight"] = torch.randn(8, 384)  # DINO projection head: dropped
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": teacher, "student": {}, "epoch": 100}, path)
    loaded = build_backbone("dino_vits16", weights=str(path))
    assert _same_outputs(source, loaded, 32)


def test_official_dinov2_checkpoint_with_mask_token_loads(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("dinov2_vits14")
    sd = dict(source.model.state_dict())
    sd["mask_token"] = torch.zeros(1, 384)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    loaded = build_backbone("dinov2_vits14", weights=path)
    assert _same_outputs(source, loaded, 28)


def test_official_mocov2_checkpoint_loads_with_prefix_stripped_and_fc_dropped(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("mocov2_r50")
    sd = {f"module.encoder_q.{k}": v for k, v in source.model.state_dict().items() if not k.startswith("fc.")}
    sd["module.encoder_q.fc.0.weight"] = torch.randn(2048, 2048)  # MLP head: dropped
    sd["module.encoder_q.fc.2.weight"] = torch.randn(128, 2048)
    sd["module.encoder_k.conv1.weight"] = torch.randn(64, 3, 7, 7)  # momentum encoder: dropped
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save({"arch": "resnet50", "epoch": 800, "state_dict": sd}, path)
    loaded = build_backbone("mocov2_r50", weights=path)
    assert _same_outputs(source, loaded, 64)


def test_timm_safetensors_loads(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = build_backbone("tiny_vit")
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    assert _same_outputs(source, build_backbone("tiny_vit", weights=path), 64)


def test_checkpoint_of_another_architecture_is_an_error_that_says_what_is_missing(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(build_backbone("tiny_vit").model.state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit this architecture"):
        build_backbone("dino_vits16", weights=path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Path("/etc/passwd")}, path)  # an arbitrary object, not tensors
    with pytest.raises(WeightsError, match="weights-only|state dict of tensors"):
        build_backbone("tiny_vit", weights=path)


def test_bad_weights_values_are_errors():
    with pytest.raises(WeightsError, match="no such file"):
        build_backbone("tiny_vit", weights="/nonexistent/ckpt.pth")
    with pytest.raises(WeightsError, match="hub.*packaged.*random"):
        build_backbone("tiny_vit", weights="pretrained")
    with pytest.raises(WeightsError, match="only available for"):
        build_backbone("dino_vits16", weights="packaged")


def test_hub_weights_without_network_fail_fast_naming_the_offline_choices():
    code = (
        "from datus.backbones import build_backbone\n"
        "build_backbone('dino_vits16', weights='hub')\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60
    assert "WeightsError" in proc.stderr
    assert "backbone.weights=packaged" in proc.stderr and "checkpoint" in proc.stderr


def test_checkpoint_url_download_failure_is_explained(monkeypatch):
    import urllib.error

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsError, match="mocov2_r50.*backbone.weights=packaged"):
        build_backbone("mocov2_r50", weights="hub")


def test_a_random_backbone_is_one_fixed_network_whatever_the_random_state():
    """train.py and evaluate.py ckpt= rebuild the frozen backbone: with weights=random it followed the
    global random state at that moment, so they got different networks (6.4 vs 5.1 mIoU for one
    checkpoint, exit 0). The global random state is left as it was."""
    torch.manual_seed(1)
    first = build_backbone("tiny_vit", weights="random").model.state_dict()
    after_first = torch.rand(3)
    torch.manual_seed(2)
    torch.rand(100)
    second = build_backbone("tiny_vit", weights="random").model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after_first)  # building it drew nothing from the global generator
