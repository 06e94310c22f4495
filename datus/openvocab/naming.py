"""CLIP names SAM's masks: each mask's crop against the class prompts, a pseudo label per pixel.

Each class is described by the mean of its prompts' CLIP text embeddings (prompt ensembling, as
CLIP's zero-shot classifiers do). A mask's crop is its bounding box, the pixels outside the mask
set to the crop's mean colour, so CLIP sees the region and little of its surroundings; its class
is the most similar prompt, its confidence the softmax over the classes at ``temperature`` (CLIP's
logit scale 100 = 0.01). Pixels no kept mask covers, or whose mask's confidence is below
``min_confidence``, stay unlabelled (255).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from datus.masks import UNLABELLED
from datus.openvocab.automatic import MaskProposal, paint
from datus.openvocab.models import ClipImageEncoder, ClipTextEncoder
from datus.openvocab.tokenizer import DEFAULT_TEMPLATES, ClipTokenizer, prompts

__all__ = ["ClipNamer", "class_embeddings", "mask_crop"]


def class_embeddings(text_encoder: ClipTextEncoder, names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                     tokenizer: ClipTokenizer | None = None) -> np.ndarray:
    """``(C, D)`` L2-normalised class embeddings: the mean of each name's prompt embeddings (CLIP's
    prompt ensembling). What CLIP names masks with, and an open-vocabulary head's prototypes."""
    texts = prompts(names, templates)
    flat = text_encoder.encode((tokenizer or ClipTokenizer())([t for group in texts for t in group]))
    per_class = flat.reshape(len(texts), len(texts[0]), -1).mean(axis=1)
    return per_class / np.linalg.norm(per_class, axis=1, keepdims=True).clip(1e-12)


def mask_crop(image: np.ndarray, mask: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """The mask's bounding box (plus ``margin`` of its size) with the pixels outside it greyed to the mean."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        raise ValueError("an empty mask has no crop")
    dy, dx = int((ys.max() - ys.min() + 1) * margin), int((xs.max() - xs.min() + 1) * margin)
    top, bottom = max(0, ys.min() - dy), min(mask.shape[0], ys.max() + 1 + dy)
    left, right = max(0, xs.min() - dx), min(mask.shape[1], xs.max() + 1 + dx)
    crop = image[top:bottom, left:right].copy()
    inside = mask[top:bottom, left:right]
    if inside.any():
        crop[~inside] = crop[inside].mean(axis=0).astype(np.uint8)
    return crop


class ClipNamer:
    """``namer(image, proposals) -> (H, W) uint8`` class indices (255 unlabelled), and per-mask names."""

    def __init__(self, image_encoder: ClipImageEncoder, text_encoder: ClipTextEncoder, class_names: Sequence[str],
                 *, templates: Sequence[str] = DEFAULT_TEMPLATES, temperature: float = 0.01,
                 min_confidence: float = 0.0, tokenizer: ClipTokenizer | None = None) -> None:
        if not float(temperature) > 0:
            raise ValueError(f"method.clip.temperature={temperature} must be > 0")
        if not 0 <= float(min_confidence) <= 1:
            raise ValueError(f"method.clip.min_confidence={min_confidence} must be in [0, 1]")
        if len(class_names) > 255:
            raise ValueError(f"{len(class_names)} class names: masks hold at most 255 classes")
        self.image_encoder, self.class_names = image_encoder, list(class_names)
        self.temperature, self.min_confidence = float(temperature), float(min_confidence)
        #: ``(C, D)`` L2-normalised class embeddings (what the alignment module takes as prototypes)
        self.text_embeddings = class_embeddings(text_encoder, self.class_names, templates, tokenizer)

    def scores(self, crops: list[np.ndarray]) -> np.ndarray:
        """``(N, C)`` softmax over the classes of each crop."""
        if not crops:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        logits = self.image_encoder.encode(crops) @ self.text_embeddings.T / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)

    def __call__(self, image: np.ndarray, proposals: list[MaskProposal]) -> tuple[np.ndarray, np.ndarray]:
        """``((H, W) uint8 labels, (N, C) per-mask class probabilities)``."""
        probs = self.scores([mask_crop(image, p.mask) for p in proposals])
        owner = paint(proposals, image.shape[:2])
        labels = np.full(image.shape[:2], UNLABELLED, dtype=np.uint8)
        for index in range(len(proposals)):
            if probs[index].max() >= self.min_confidence:
                labels[owner == index] = int(probs[index].argmax())
        return labels, probs
