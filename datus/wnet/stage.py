"""The W-Net stage: train a W-Net once per (split files, settings, K), keep it, segment images with it.

Shared by ``method=wnet`` (its argmax over K is the mask) and ``graph=wnet`` (its connected
regions are DatUS²'s segments). The model is kept in ``<cache root>/wnet/<hash>/wnet.pt`` (hash
of the training split's files, these settings and K) with its ``config.json``, a CSV log, loss
curves and sample pictures; it is trained under a lock with a checkpoint after every epoch, so a
killed training resumes to the same weights, and reused by every later run with those settings.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from datus.features import dataset_identity
from datus.io import atomic_write
from datus.masks import check_k
from datus.runs import cache_entry, make_once
from datus.training import ArtefactError, load_artefact, save_artefact
from datus.wnet.data import ImageBank
from datus.wnet.model import WNet
from datus.wnet.module import WNetModule
from datus.wnet.ncut import SoftNCut

log = logging.getLogger(__name__)

__all__ = ["WNetFileError", "WNetTraining", "load_wnet"]

#: Version of ``wnet.pt``'s layout.
WNET_FORMAT = 1
#: Version of the training itself (part of the cache key): a fix to training must not reuse older models.
TRAINING_VERSION = 1


class WNetFileError(ArtefactError):
    """A W-Net file cannot be used: unreadable, or made for another K."""


def save_wnet(path: Path, model: WNet, meta: dict[str, Any]) -> Path:
    return save_artefact(path, "W-Net", WNET_FORMAT, model.state_dict(),
                         {**meta, "k": model.k, "widths": model.widths, "dropout": model.dropout})


def load_wnet(path: str | Path, *, k: int | None = None, setting: str = "wnet.checkpoint") -> tuple[WNet, dict]:
    """A saved W-Net (eval mode) and its meta, checked against the ``k`` it must predict."""
    path = Path(path)
    state, meta = load_artefact(path, "W-Net", (WNET_FORMAT,), setting, WNetFileError)
    try:
        model = WNet(k=int(meta["k"]), widths=meta["widths"], dropout=float(meta["dropout"]))
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - any unreadable file is named the same way
        raise WNetFileError(f"{setting}={path}: not a W-Net file ({type(err).__name__}: {err})") from err
    if k is not None and model.k != int(k):
        raise WNetFileError(f"{setting}={path} segments into K={model.k} classes, but k={k}: pass k={model.k} "
                            "or train a W-Net for this K (drop the checkpoint)")
    return model.eval(), meta


class WNetTraining:
    """How a W-Net is built and trained (config group ``wnet``: presets ``cpu`` and ``paper``).

    ``widths`` of each U-Net's modules, ``dropout`` after each; ``input_size`` (H, W) every image
    is resized to, for training and segmenting (multiples of the total stride
    ``2 ** (len(widths) - 1)``); ``epochs`` over the training split in batches of ``batch_size``
    with Adam at ``lr``; ``ncut`` the soft N-cut's ``radius``, ``sigma_i``, ``sigma_x``.
    ``train_split`` trains on another split of the dataset and segments this one (null: the
    split itself, transductive like discovery); ``checkpoint`` uses a ``wnet.pt`` trained elsewhere.
    """

    def __init__(
        self,
        *,
        name: str = "cpu",
        widths: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.0,
        input_size: Sequence[int] = (96, 128),
        epochs: int = 20,
        batch_size: int = 8,
        lr: float = 1e-3,
        ncut: dict | None = None,
        ncut_weight: float = 1.0,
        seed: int = 0,
        pictures: int = 4,
        accelerator: str = "cpu",
        train_split: str | None = None,
        checkpoint: str | None = None,
    ) -> None:
        self.name, self.widths, self.dropout = str(name), [int(w) for w in widths], float(dropout)
        self.input_size = tuple(int(s) for s in input_size)
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        #: the soft N-cut, built (and its settings checked) now, not after the images are decoded
        self.ncut = SoftNCut(**dict(ncut or {}))
        self.ncut_weight, self.seed, self.pictures = float(ncut_weight), int(seed), int(pictures)
        self.accelerator, self.train_split, self.checkpoint = str(accelerator), train_split, checkpoint
        stride = 2 ** (len(self.widths) - 1)
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"wnet.widths={self.widths}: need at least two positive widths")
        if len(self.input_size) != 2 or min(self.input_size) < stride or any(s % stride for s in self.input_size):
            fix = [max(stride, round(s / stride) * stride) for s in self.input_size]
            raise ValueError(f"wnet.input_size={list(self.input_size)}: height and width must be positive multiples "
                             f"of the U-Nets' total stride {stride} (2^(len(wnet.widths)-1)); e.g. {fix}")
        for setting, value, least in (("wnet.epochs", self.epochs, 1), ("wnet.batch_size", self.batch_size, 2),
                                      ("wnet.pictures", self.pictures, 0)):
            if value < least:
                raise ValueError(f"{setting}={value} must be >= {least}"
                                 + (" (batch norm needs two images per batch)" if setting == "wnet.batch_size" else ""))
        if not 0 <= self.dropout < 1:
            raise ValueError(f"wnet.dropout={self.dropout} must be in [0, 1)")
        if self.lr <= 0:
            raise ValueError(f"wnet.lr={self.lr} must be > 0")
        self.report: dict[str, Any] = {}

    @property
    def stride(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def settings(self) -> dict[str, Any]:
        """What changes the trained W-Net (with the training split's files and K: the cache key)."""
        return {"training_version": TRAINING_VERSION, "widths": self.widths, "dropout": self.dropout,
                "input_size": list(self.input_size), "epochs": self.epochs, "batch_size": self.batch_size,
                "lr": self.lr, "ncut": {"radius": self.ncut.radius, "sigma_i": self.ncut.sigma_i,
                                        "sigma_x": self.ncut.sigma_x},
                "ncut_weight": self.ncut_weight, "seed": self.seed}

    @property
    def device(self) -> str:
        """Where the W-Net segments images: the GPU when ``accelerator`` asks for one and there is one."""
        return "cuda" if self.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu"

    def summary(self) -> dict[str, Any]:
        """What a run's summary says of the W-Net: its file, whether this run trained it, how long
        that took, the final losses (the per-epoch curve is in :attr:`report`)."""
        history = self.report.get("history") or []
        seconds = self.report.get("training_seconds")
        return {"preset": self.name, "path": self.report.get("path"), "trained_this_run": self.report.get("trained_this_run"),
                "training_minutes": None if seconds is None else round(seconds / 60, 2),
                "training_images": self.report.get("training_images"),
                "train_split": self.train_split, "epochs": len(history),
                "final_losses": history[-1] if history else None}

    def copy_pictures(self, folder: Path) -> list[Path]:
        """The training's loss curves and its last sample picture into ``folder`` (``wnet_*.png``), so a
        run shows them (and W&B logs them) beside its other pictures."""
        source = Path(self.report.get("pictures") or "")
        if not source.is_dir():
            return []
        epochs = sorted(source.glob("epoch_*.png"))
        copied = []
        for picture, name in ((source / "loss_curves.png", "wnet_loss_curves.png"),
                              (epochs[-1] if epochs else None, "wnet_samples.png")):
            if picture is not None and picture.is_file():
                data = picture.read_bytes()
                copied.append(atomic_write(Path(folder) / name, lambda f, d=data: f.write(d)))
        return copied

    def check(self, k: int) -> None:
        """Fail before any work on a bad K or an unusable ``checkpoint``."""
        check_k(k, "k")
        if self.checkpoint is not None:
            load_wnet(self.checkpoint, k=k)

    def training_set(self, dataset):
        """The split the W-Net learns from: ``dataset`` itself, or its ``train_split``."""
        return dataset if self.train_split in (None, dataset.split) else dataset.with_split(self.train_split)

    def bank(self, dataset, cache_root: Path) -> ImageBank:
        """``dataset``'s images at the input size, decoded once into ``<cache_root>/wnet/images/<hash>``."""
        folder = cache_entry(cache_root, "wnet", {"images": dataset_identity(dataset), "size": list(self.input_size)})
        return ImageBank.build(dataset, folder, self.input_size)

    def prepare(self, dataset, *, cache_root: str | Path, k: int) -> WNet:
        """The W-Net for ``dataset`` (trained on :meth:`training_set`, or loaded): from the cache, or trained now."""
        cache_root = Path(cache_root)
        if self.checkpoint is not None:
            model, meta = load_wnet(self.checkpoint, k=k)
            self.report = {"path": str(self.checkpoint), "trained_this_run": False,
                           "training_seconds": meta.get("seconds"), "history": meta.get("history", [])}
            return model
        train_set = self.training_set(dataset)
        settings = {"dataset": dataset_identity(train_set), "wnet": self.settings(), "k": int(k)}
        folder = cache_entry(cache_root, "wnet", settings)
        path = folder / "wnet.pt"

        def train() -> None:
            start = time.monotonic()
            bank = self.bank(train_set, cache_root)
            module = self._train(bank, folder, k)
            save_wnet(path, copy.deepcopy(module.model).cpu(),
                      {"settings": settings, "seconds": time.monotonic() - start, "history": module.history,
                       "images": len(bank), "skipped": bank.skipped})

        trained = make_once(path, settings, "the W-Net", train)
        model, meta = load_wnet(path, k=k, setting="the cached W-Net")
        #: what a run's summary says of the W-Net
        self.report = {"path": str(path), "trained_this_run": trained, "training_seconds": meta.get("seconds"),
                       "training_images": meta.get("images"), "history": meta.get("history", []),
                       "pictures": str(folder / "pictures")}
        return model

    def _train(self, bank: ImageBank, folder: Path, k: int) -> WNetModule:
        from torch.utils.data import DataLoader

        from datus.training import folder_trainer
        from datus.wnet.callbacks import WNetPictures

        if len(bank) < 2:
            raise ValueError(f"a W-Net needs at least 2 readable images to train on, the split has {len(bank)}")
        pl.seed_everything(self.seed, workers=True, verbose=False)
        model = WNet(k=k, widths=self.widths, dropout=self.dropout)
        module = WNetModule(model, self.ncut, lr=self.lr, ncut_weight=self.ncut_weight)
        loader = DataLoader(bank, batch_size=min(self.batch_size, len(bank)), shuffle=True, drop_last=True)
        trainer, resume = folder_trainer(
            folder, accelerator=self.accelerator,
            checkpoint_every={"every_n_epochs": 1, "save_on_train_epoch_end": True},
            callbacks=[WNetPictures(bank, folder / "pictures", count=self.pictures)],
            max_epochs=self.epochs, log_every_n_steps=max(1, min(10, len(loader))))
        log.info("training the W-Net (%s): %d images at %dx%d, %d epochs of %d batches (%s)", self.name, len(bank),
                 self.input_size[1], self.input_size[0], self.epochs, len(loader), folder)
        trainer.fit(module, loader, ckpt_path=resume)
        return module


@torch.no_grad()
def segment_bank(model: WNet, bank: ImageBank, *, batch_size: int = 16, device: str = "cpu"):
    """Yield ``(position in bank, (k, H, W) float32 memberships)`` for every image of the bank."""
    from rich.progress import track

    model = model.to(device).eval()
    for start in track(range(0, len(bank), batch_size), description=f"W-Net on {len(bank)} images", transient=True):
        stop = min(start + batch_size, len(bank))
        images = torch.stack([bank[i]["image"] for i in range(start, stop)]).to(device)
        probs = model.segment(images).float().cpu().numpy()
        yield from zip(range(start, stop), probs)


def memberships_to_mask(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(k, h, w)`` memberships resized bilinearly to ``size`` (H, W), argmax: uint8 labels."""
    from datus.postprocess import upsample_scores

    return upsample_scores(torch.from_numpy(probs), size).argmax(dim=0).numpy().astype(np.uint8)
