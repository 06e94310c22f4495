"""Second passes over the images: segment-crop embeddings (DatUS² step 4) and patch tokens."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from datus.backbones import Backbone
from datus.discovery.store import ImageSegments


def segment_crops(
    image: Tensor,
    segments: np.ndarray,
    segment_ids: list[int],
    patch_size: int,
    size: int = 224,
    background: str = "black",
) -> Tensor:
    """``(S, 3, size, size)`` float crops in [0, 1], one per segment id.

    Each crop is the segment's bounding box with the pixels outside the segment set to
    ``background`` (``"black"`` as the paper, or ``"mean"``: the ImageNet mean colour, which
    the backbone's normalisation maps to zero), padded to a square (never centre-cropped, which
    would cut part of the segment away) and resized to ``size``.
    """
    if background not in ("black", "mean"):
        raise ValueError(f"labeling.crop_background={background!r}: choose 'black' or 'mean'")
    img = image.float() / 255 if image.dtype == torch.uint8 else image.float()
    fill = torch.zeros(3, 1, 1) if background == "black" else torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    fill = fill.to(img)
    seg = torch.from_numpy(np.ascontiguousarray(segments)).to(img.device)
    crops = []
    for sid in segment_ids:
        inside = seg == sid
        rows = torch.nonzero(inside.any(dim=1)).flatten()
        cols = torch.nonzero(inside.any(dim=0)).flatten()
        y0, y1 = int(rows[0]) * patch_size, (int(rows[-1]) + 1) * patch_size
        x0, x1 = int(cols[0]) * patch_size, (int(cols[-1]) + 1) * patch_size
        mask = inside.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)[y0:y1, x0:x1]
        crop = torch.where(mask, img[:, y0:y1, x0:x1], fill)
        h, w = crop.shape[-2:]
        side = max(h, w)
        canvas = fill.expand(3, side, side).clone()
        top, left = (side - h) // 2, (side - w) // 2
        canvas[:, top : top + h, left : left + w] = crop
        crops.append(F.interpolate(canvas[None], size=(size, size), mode="bilinear",
                                   align_corners=False, antialias=True)[0])
    return torch.stack(crops) if crops else img.new_zeros(0, 3, size, size)


class SegmentEmbedder(pl.LightningModule):
    """Embeds every segment of each image (valid ones, or all when filling) by its crop's CLS."""

    def __init__(self, extractor: Backbone, records: Mapping[int, ImageSegments], patch_size: int,
                 crop_size: int = 224, background: str = "black", all_segments: bool = True,
                 chunk: int = 64) -> None:
        super().__init__()
        self.extractor = extractor
        self.records, self.patch_size = records, int(patch_size)
        self.crop_size, self.background = int(crop_size), background
        self.all_segments, self.chunk = all_segments, int(chunk)

    def predict_step(self, batch: dict, batch_idx: int) -> list[tuple[int, str, np.ndarray, tuple[int, ...]]]:
        """The crops of every image of the batch go through the backbone together, ``chunk`` at a time
        (a street scene has 2-3 valid segments at the paper's setting: one forward per image would
        run at batch size 2)."""
        crops, wanted = [], []
        for item in batch["items"]:
            dec = self.records[int(item["index"])].decomposition
            ids = list(range(dec.segment_valid.size)) if self.all_segments else np.flatnonzero(dec.segment_valid).tolist()
            crops.append(segment_crops(item["image"], dec.segments, ids, self.patch_size, self.crop_size, self.background))
            wanted.append((item, dec.segment_valid.size, ids))
        crops = torch.cat(crops) if crops else torch.zeros(0, 3, self.crop_size, self.crop_size)
        feats = [self.extractor(self.extractor.normalize(c.to(self.device))).cls
                 for c in crops.split(self.chunk) if len(c)]  # a batch without valid segments: no forward
        x = torch.cat(feats) if feats else torch.zeros(0, self.extractor.embed_dim)
        x = F.normalize(x.float(), dim=1).cpu().numpy()
        out, start = [], 0
        for item, count, ids in wanted:
            full = np.zeros((count, x.shape[1]), dtype=np.float32)
            full[ids] = x[start:start + len(ids)]
            start += len(ids)
            out.append((int(item["index"]), item["stem"], full, ()))
        return out
