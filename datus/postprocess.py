"""Dense CRF (Krähenbühl & Koltun 2011): class scores sharpened to the image's edges.

The fully connected CRF with Gaussian (position) and bilateral (position + colour) kernels,
mean-field inference by ``pydensecrf2`` (the maintained fork of the authors' permutohedral
lattice code; it builds from source in well under a minute). Default parameters are those
STEGO and PriMaPs publish. Scores come as ``(K, h, w)`` logits on any grid (the patch grid of
a head, or per-patch cluster scores of discover.py) and are upsampled bilinearly to the image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class DenseCRF:
    """``crf(image, logits) -> (H, W)`` uint8 labels; ``crf.probabilities(...)`` for the marginals.

    ``image`` is ``(H, W, 3)`` uint8 RGB at the size the labels are wanted; ``logits`` are
    ``(K, h, w)`` scores (softmax of ``logits / temperature`` gives the unary). ``iterations``
    of mean field; ``pos_*`` the smoothness kernel, ``bi_*`` the appearance kernel.
    """

    def __init__(self, *, iterations: int = 10, temperature: float = 1.0, pos_xy_std: float = 1.0,
                 pos_w: float = 3.0, bi_xy_std: float = 67.0, bi_rgb_std: float = 3.0, bi_w: float = 4.0) -> None:
        if int(iterations) < 1:
            raise ValueError(f"postprocess.iterations={iterations} must be >= 1")
        if float(temperature) <= 0:
            raise ValueError(f"postprocess.temperature={temperature} must be > 0")
        self.iterations, self.temperature = int(iterations), float(temperature)
        self.pos_xy_std, self.pos_w = float(pos_xy_std), float(pos_w)
        self.bi_xy_std, self.bi_rgb_std, self.bi_w = float(bi_xy_std), float(bi_rgb_std), float(bi_w)
        import pydensecrf.densecrf  # noqa: F401  (fail at construction, not after a long run)

    def probabilities(self, image: np.ndarray, logits: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(K, H, W)`` float32 marginals after mean field."""
        import pydensecrf.densecrf as dcrf

        image = np.ascontiguousarray(image, dtype=np.uint8)
        if not image.flags.writeable:  # np.asarray(PIL image) is read-only; pydensecrf asks for a writable buffer
            image = image.copy()
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"the CRF needs an (H, W, 3) RGB image, got {image.shape}")
        height, width = image.shape[:2]
        scores = torch.as_tensor(logits, dtype=torch.float32)
        if scores.ndim != 3:
            raise ValueError(f"the CRF needs (K, h, w) scores, got {tuple(scores.shape)}")
        num_classes = scores.shape[0]
        probs = upsample_scores(scores / self.temperature, (height, width)).softmax(dim=0).numpy()
        unary = -np.log(np.clip(probs, 1e-8, 1.0)).reshape(num_classes, -1)
        crf = dcrf.DenseCRF2D(width, height, num_classes)
        crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
        crf.addPairwiseGaussian(sxy=self.pos_xy_std, compat=self.pos_w)
        crf.addPairwiseBilateral(sxy=self.bi_xy_std, srgb=self.bi_rgb_std, rgbim=image, compat=self.bi_w)
        return np.asarray(crf.inference(self.iterations), dtype=np.float32).reshape(num_classes, height, width)

    def __call__(self, image: np.ndarray, logits: np.ndarray | torch.Tensor) -> np.ndarray:
        return self.probabilities(image, logits).argmax(axis=0).astype(np.uint8)

    def __repr__(self) -> str:
        return (f"DenseCRF(iterations={self.iterations}, temperature={self.temperature}, pos=({self.pos_xy_std}, "
                f"{self.pos_w}), bilateral=({self.bi_xy_std}, {self.bi_rgb_std}, {self.bi_w}))")


def upsample_scores(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(K, h, w)`` (or ``(B, K, h, w)``) scores resized bilinearly to ``size`` (scores, never labels)."""
    batched = scores.ndim == 4
    x = scores if batched else scores[None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return x if batched else x[0]


def labels_from_scores(scores: torch.Tensor, size: tuple[int, int], image: np.ndarray | None = None,
                       crf: DenseCRF | None = None) -> np.ndarray:
    """``(H, W)`` uint8 labels from ``(K, h, w)`` scores: the CRF with the image, or bilinear + argmax."""
    if crf is not None:
        if image is None:
            raise ValueError("the CRF needs the image")
        return crf(image, scores)
    return upsample_scores(scores, size).argmax(dim=0).numpy().astype(np.uint8)
