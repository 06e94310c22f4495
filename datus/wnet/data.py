"""A split's images at the W-Net's input size, decoded once into a memory-mapped uint8 file.

W-Net trains for many epochs on small inputs: decoding each 720x960 PNG every epoch would cost
more than the network. The bank resizes every image once (any size, grayscale or RGB: the
datasets return RGB) to ``(H, W)``, keeps them in ``images-HxW.u8`` beside an index of the
images it holds (and of those it could not read, with the reason), and is rebuilt when the
split's files change.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datus.data import DatasetError, MaskError
from datus.io import atomic_write, load_json, write_json
from datus.runs import files_fingerprint

log = logging.getLogger(__name__)

__all__ = ["ImageBank", "resize_image"]


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(3, h, w)`` uint8 resized (bilinear, antialiased) to ``size``, uint8."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None].float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return out[0].round().clamp(0, 255).to(torch.uint8)


class ImageBank(Dataset):
    """``bank[i] -> {"image": (3, H, W) float in [0, 1], "index": dataset index}`` for every readable image.

    ``ImageBank.build(dataset, folder, size)`` decodes what is missing (reusing a bank of the
    same files and size), with a progress bar; ``skipped`` lists the unreadable images.
    """

    def __init__(self, path: Path, index: dict[str, Any]) -> None:
        self.path, self.size = Path(path), tuple(index["size"])
        self.indices: list[int] = index["indices"]
        self.stems: list[str] = index["stems"]
        #: each image's original (H, W), what its mask is resized to
        self.sizes: list[tuple[int, int]] = [tuple(s) for s in index["sizes"]]
        self.skipped: list[dict[str, Any]] = index["skipped"]
        self.images = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(len(self.indices), 3, *self.size)) \
            if self.indices else np.zeros((0, 3, *self.size), dtype=np.uint8)

    @classmethod
    def build(cls, dataset, folder: str | Path, size: tuple[int, int]) -> ImageBank:
        from rich.progress import track

        folder, size = Path(folder), (int(size[0]), int(size[1]))
        path, index_path = folder / f"images-{size[0]}x{size[1]}.u8", folder / f"images-{size[0]}x{size[1]}.json"
        files = files_fingerprint([(s.stem, s.image) for s in dataset.samples])
        if index_path.is_file() and path.is_file():
            index = load_json(index_path)
            if index.get("files") == files and index.get("size") == list(size):
                return cls(path, index)
            log.info("the split's files changed since %s was made: decoding them again", path)
        indices, stems, sizes, skipped = [], [], [], []

        def write(f) -> None:
            for i in track(range(len(dataset)), description=f"decoding {len(dataset)} images at {size[1]}x{size[0]}",
                           transient=True):
                try:
                    image = dataset.load(i)["image"]
                except MaskError:
                    raise  # a bad ground-truth mask stops the run now, not at evaluation after training
                except (DatasetError, OSError) as err:
                    skipped.append({"index": i, "stem": dataset.samples[i].stem, "error": str(err)})
                    continue
                f.write(resize_image(image, size).numpy().tobytes())
                indices.append(i)
                stems.append(dataset.samples[i].stem)
                sizes.append([int(s) for s in image.shape[-2:]])

        atomic_write(path, write)
        for entry in skipped:
            log.warning("skipped %s: %s", entry["stem"], entry["error"])
        index = {"size": list(size), "files": files, "indices": indices, "stems": stems, "sizes": sizes, "skipped": skipped}
        write_json(index_path, index)
        return cls(path, index)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": torch.from_numpy(np.array(self.images[i])).float() / 255.0, "index": self.indices[i]}
