"""Tiny ONNX models with the inputs, outputs, shapes and dtypes of the real CLIP and SAM exports.

Exported from small torch modules (random weights, seeded), so ``method=clip_sam`` and its parts
run end to end without the real weights, which cannot be installed here. The SAM decoder's mask
is a disc around the prompt point and its predicted IoU falls with the point's x, so filtering
and deduplication have something to do.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

DIM = 16


class _ClipImage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, DIM)

    def forward(self, x):
        return self.proj(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


class _ClipText(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(49408, DIM)

    def forward(self, ids):
        return self.embed(ids).mean(dim=1)


class _SamEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 256, 1)

    def forward(self, x):
        return self.proj(nn.functional.avg_pool2d(x, 16))


class _SamDecoder(nn.Module):
    """Three masks per point: discs of radius 60, 120 and 240 (encoder frame) around the point."""

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
        ys = torch.arange(256, dtype=torch.float32).view(1, 1, 256, 1) * 4
        xs = torch.arange(256, dtype=torch.float32).view(1, 1, 1, 256) * 4
        point = point_coords[:, :1]  # (1, 1, 2)
        distance = ((xs - point[..., 0].view(1, 1, 1, 1)) ** 2 + (ys - point[..., 1].view(1, 1, 1, 1)) ** 2).sqrt()
        radii = torch.tensor([60.0, 120.0, 240.0]).view(1, 3, 1, 1)
        low_res = (radii - distance) / 10 + 0 * image_embeddings.mean() + 0 * mask_input.mean()
        size = orig_im_size.to(torch.int64)
        masks = nn.functional.interpolate(low_res, size=(size[0], size[1]), mode="bilinear", align_corners=False)
        iou = torch.sigmoid(3 - point[..., 0] / 200).view(1, 1) * torch.tensor([[0.9, 1.0, 0.95]])
        return masks, iou + 0 * has_mask_input.sum() + 0 * point_labels.sum(), low_res


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> Path:
    torch.manual_seed(0)
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                          opset_version=17, dynamo=False)
    return path


def build_all(folder: Path) -> dict[str, Path]:
    """The four files in ``folder``: clip_image.onnx, clip_text.onnx, sam_encoder.onnx, sam_decoder.onnx."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    return {
        "clip_image": _export(_ClipImage(), (torch.rand(1, 3, 224, 224),), folder / "clip_image.onnx",
                              ["pixel_values"], ["image_embeds"], {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}}),
        "clip_text": _export(_ClipText(), (torch.zeros(1, 77, dtype=torch.int64),), folder / "clip_text.onnx",
                             ["input_ids"], ["text_embeds"], {"input_ids": {0: "batch"}, "text_embeds": {0: "batch"}}),
        "sam_encoder": _export(_SamEncoder(), (torch.rand(1, 3, 1024, 1024),), folder / "sam_encoder.onnx",
                               ["image"], ["image_embeddings"], {}),
        "sam_decoder": _export(
            _SamDecoder(),
            (torch.rand(1, 256, 64, 64), torch.rand(1, 2, 2) * 1024, torch.tensor([[1.0, -1.0]]),
             torch.zeros(1, 1, 256, 256), torch.zeros(1), torch.tensor([480.0, 640.0])),
            folder / "sam_decoder.onnx",
            ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"],
            ["masks", "iou_predictions", "low_res_masks"],
            {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}),
    }
