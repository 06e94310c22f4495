"""Checkpoints written beside their final name and renamed into place.

Lightning's own save writes to the system temp folder and *moves* the file, which becomes a
copy (not atomic) when the temp folder is on another file system, as it usually is on a
cluster (node-local ``/tmp``, checkpoints on shared storage); a SIGKILL during that copy leaves
a truncated ``last.ckpt`` and the temporary file behind. Here the temporary file sits in the
checkpoint's folder, named after its writer, so the rename is atomic and the next run removes
a killed writer's leftover (:func:`datus.io.remove_stale_temporaries`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from datus.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local saves are atomic renames; remote URLs go to Lightning."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f))
