"""W-Net (``method=wnet``, Xia & Kulis 2017): two U-Nets trained without labels on the split's pixels."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datus.labeling import Labeler
from datus.labeling.run import ScoresToMask
from datus.masks import save_masks
from datus.methods.base import Job, Method
from datus.wnet import WNetTraining

log = logging.getLogger(__name__)


class WNetMethod(Method):
    """W-Net (Xia & Kulis 2017): a W-Net trained without labels on the split (or ``wnet.train_split``);
    each pixel's argmax over its K memberships is the mask (through the dense CRF with ``postprocess=crf``),
    and regions smaller than ``min_region`` of the image are merged into a neighbour (the paper's two
    post-processing steps; 0: none). Reads pixels only: no backbone."""

    name = "wnet"
    cache_kind = None
    uses_backbone = False

    def __init__(self, *, wnet: WNetTraining, min_region: float = 0.0) -> None:
        if not 0 <= float(min_region) < 1:
            raise ValueError(f"method.min_region={min_region} must be a fraction of the image in [0, 1)")
        self.wnet, self.min_region = wnet, float(min_region)
        self._model = None
        self._cache_root: Path | None = None

    def features_read(self) -> dict[str, str]:
        return {}

    def check(self, *, k: int) -> None:
        self.wnet.check(k)

    def prepare(self, dataset, *, cache_root: Path, k: int) -> dict[str, Any]:
        self._model, self._cache_root = self.wnet.prepare(dataset, cache_root=cache_root, k=k), Path(cache_root)
        return {"wnet": self.wnet.summary()}

    def compute(self, job: Job) -> dict[str, Any]:
        return {}

    def scores_to_mask(self, labeler: Labeler, crf, dataset) -> ScoresToMask | None:
        """The CRF on the log-memberships (the paper's post-processing), with each original image."""
        if crf is None:
            return None

        def to_mask(index: int, probs: np.ndarray) -> np.ndarray:
            image = dataset.load(index)["image"].permute(1, 2, 0).numpy()
            return crf(image, torch.from_numpy(np.log(np.clip(probs, 1e-8, 1.0))))

        return to_mask

    def label(self, job: Job, scores_to_mask: ScoresToMask | None) -> dict[str, Any]:
        from datus.wnet import memberships_to_mask, merge_small_regions, segment_bank

        if self._model is None:
            raise RuntimeError("WNetMethod.label before prepare")
        bank = self.wnet.bank(job.loop.dataset, self._cache_root)

        def masks():
            for position, probs in segment_bank(self._model, bank, device=self.wnet.device):
                index, size = bank.indices[position], bank.sizes[position]
                mask = memberships_to_mask(probs, size) if scores_to_mask is None else scores_to_mask(index, probs)
                yield bank.stems[position], merge_small_regions(mask, round(self.min_region * mask.size)), size

        written = save_masks(job.out_dir, masks(), job.labeler.k)
        self.wnet.copy_pictures(job.out_dir / "pictures")
        for entry in bank.skipped:
            log.warning("skipped %s: %s", entry["stem"], entry["error"])
        return {"method": self.name, "k": job.labeler.k, "images": len(bank), "skipped": bank.skipped,
                "postprocessed": scores_to_mask is not None, "min_region": self.min_region,
                "coverage": written["coverage"],
                "cluster_pixels": written["cluster_pixels"]}
