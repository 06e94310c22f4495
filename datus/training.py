"""What every trained stage shares: resumable training in one folder, atomic checkpoints, trained files.

The feature head, W-Net, PriMaPs-EM and the refinement heads all train the same way: a
Lightning trainer whose checkpoints carry the random state (a killed training resumes to the
same weights, :class:`RandomStateCheckpoint`), written atomically beside their final name
(:class:`AtomicCheckpointIO`), and a trained file saved with its format version and what it was
trained on (:func:`save_artefact`, :func:`load_artefact`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from datus.io import atomic_write

log = logging.getLogger("datus")


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local saves are atomic renames; remote URLs go to Lightning.

    Lightning's own save writes to the system temp folder and *moves* the file, which becomes a
    copy (not atomic) when the temp folder is on another file system, as it usually is on a
    cluster (node-local ``/tmp``, checkpoints on shared storage); a SIGKILL during that copy leaves
    a truncated ``last.ckpt`` and the temporary file behind. Here the temporary file sits in the
    checkpoint's folder, named after its writer, so the rename is atomic and the next run removes
    a killed writer's leftover (:func:`datus.io.remove_stale_temporaries`).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f))


class ArtefactError(ValueError):
    """A trained file cannot be used: missing, unreadable, of another kind or of an unknown format version."""


def save_artefact(path: str | Path, kind: str, version: int, state_dict: dict[str, Any],
                  meta: dict[str, Any]) -> Path:
    """A trained file: ``state_dict`` and ``meta`` (plain values: loads with ``weights_only=True``), with its
    ``kind`` and format ``version``, written atomically."""
    payload = {"kind": kind, "format": int(version), "state_dict": state_dict, "meta": meta}
    return atomic_write(Path(path), lambda f: torch.save(payload, f))


def load_artefact(path: str | Path, kind: str, versions: Sequence[int], setting: str,
                  error: type[ArtefactError] = ArtefactError) -> tuple[dict, dict]:
    """``(state_dict, meta)`` of a :func:`save_artefact` file of this ``kind`` and one of ``versions`` (files
    written before kinds were recorded pass as this kind); anything else is an ``error`` naming ``setting``
    (the option that named the file)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise error(f"{setting}={path}: no such file") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is named the same way
        raise error(f"{setting}={path}: not a {kind} file ({type(err).__name__}: {err})") from err
    found = payload.get("kind", kind) if isinstance(payload, dict) else None
    if found != kind or "state_dict" not in payload or "meta" not in payload:
        raise error(f"{setting}={path}: not a {kind} file (it holds {found or 'something else'})")
    if payload.get("format") not in versions:
        raise error(f"{setting}={path}: a {kind} file of format {payload.get('format')}, this datus reads "
                    f"{', '.join(map(str, versions))}: train it again")
    return payload["state_dict"], payload["meta"]


def capture_random_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states, in types ``weights_only`` loads."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_random_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class RandomStateCheckpoint(pl.Callback):
    """Saves the random state of every process in every checkpoint and restores it when training resumes.

    Without it a resumed run shuffles and augments differently from an uninterrupted one. Under
    DDP each rank draws its own crops, so every rank's state is gathered into the checkpoint
    (Lightning builds the checkpoint on every rank, rank 0 writes it) and each rank gets its
    own back; resuming on another number of processes cannot be exact and says so. The state
    is put back when the checkpoint is loaded and again after the sanity-check validation that
    Lightning runs on resume (its dataloader draws a seed from the generator; the
    uninterrupted run did not run it at that point), i.e. right before the first training
    dataloader of the resumed run is created.
    """

    def __init__(self) -> None:
        self._loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state = capture_random_state()
        _, world = _rank_and_world()
        if world == 1:
            return {"ranks": [state]}
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, state)
        return {"ranks": gathered}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rank, world = _rank_and_world()
        states = state_dict.get("ranks", [state_dict])  # checkpoints before per-rank states: one state
        if len(states) != world:
            log.warning("the checkpoint holds the random state of %d process(es), this run has %d: "
                        "training resumes, but not exactly as the uninterrupted run would have", len(states), world)
        self._loaded = states[rank % len(states)]
        restore_random_state(self._loaded)

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._loaded is not None:
            restore_random_state(self._loaded)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loaded = None


def folder_trainer(folder: Path, *, accelerator: str, checkpoint_every: dict[str, int], callbacks: Sequence = (),
                   **trainer_kwargs) -> tuple[pl.Trainer, str | None]:
    """A one-device trainer whose whole training lives in ``folder`` and the checkpoint to resume from.

    What the cached trainings (the feature head, the W-Net) share: a CSV log in ``folder/log``,
    ``folder/checkpoints/last.ckpt`` saved as ``checkpoint_every`` says (``every_n_train_steps`` or
    ``every_n_epochs``), written atomically and carrying the random state, so a killed training
    resumes to the same weights. ``trainer_kwargs`` go to :class:`pl.Trainer` (the schedule, ...).
    """
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    folder = Path(folder)
    last = folder / "checkpoints" / "last.ckpt"
    trainer = pl.Trainer(
        accelerator=accelerator, devices=1, deterministic=True, logger=CSVLogger(folder, name="log", version=""),
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=folder / "checkpoints", save_last=True, save_top_k=0, **checkpoint_every),
                   RandomStateCheckpoint(), *callbacks],
        plugins=[AtomicCheckpointIO()], **trainer_kwargs,
    )
    return trainer, str(last) if last.is_file() else None


class RelocatableCheckpoint(pl.callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that keeps tracking its best checkpoint when the run folder moved.

    Lightning drops the best score (and which file holds it) when a checkpoint is resumed from another
    folder than it was written in, so a moved run's next epoch would replace ``best.ckpt`` whatever its
    score. Here the stored paths are re-rooted in the new folder (same file names) and everything is
    restored, so a moved folder resumes exactly as it would have in place.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and str(old) != str(self.dirpath):
            new = str(self.dirpath)

            def moved(path):
                if not path or not str(path).startswith(str(old)):
                    return path
                return new + str(path)[len(str(old)):]

            state_dict = {**state_dict, "dirpath": new,
                          "best_model_path": moved(state_dict.get("best_model_path")),
                          "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
                          "last_model_path": moved(state_dict.get("last_model_path")),
                          "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()}}
            log.info("checkpoints moved from %s to %s: their best score is kept", old, new)
        super().load_state_dict(state_dict)

    @property
    def state_key(self) -> str:
        # Lightning's name for this state in a checkpoint: checkpoints written by ModelCheckpoint still resume
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)
