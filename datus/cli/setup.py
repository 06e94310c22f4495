"""Process setup for the entry points: config resolvers, seeds, quiet libraries.

Nothing happens on import: each entry point (and the tests' conftest) calls
:func:`register_resolvers` before composing a config.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import OmegaConf


class _DropAdvertising(logging.Filter):
    """Lightning's "💡 Tip: try installing ..." lines and its accelerators this machine cannot have
    (TPU, HPU, IPU) say nothing about the run; "GPU available" stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("💡 Tip", "TPU available", "HPU available", "IPU available"))


def seed_everything(seed: int | None) -> None:
    """Seed python, numpy and torch (workers too) when a seed is given."""
    if seed is not None:
        pl.seed_everything(int(seed), workers=True, verbose=False)


def keep_digests(cache_dir: str | Path | None) -> None:
    """Keep the file digests the caches key on in ``<cache_dir>/digests``: a run starts without reading
    every image of its split again (only files whose stat changed are read). Nothing without a cache dir."""
    from datus.io import remember_digests

    remember_digests(Path(cache_dir).expanduser() / "digests" if cache_dir else None)


def _sweep_group(default: str) -> str:
    """``<task>-<sweep dir name>`` in a multirun (W&B group), else ``default``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return default
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"{default}-{Path(hydra_cfg.sweep.dir).name}"
    return default


def _run_name(default: str) -> str:
    """The job's overrides (``k=6,backbone=...``), or ``default`` when there are none."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return default
    return HydraConfig.get().job.override_dirname or default


def _on_gpu(accelerator: str) -> bool:
    """Whether ``trainer.accelerator`` puts the model on a GPU here: what ``sync_batchnorm`` needs
    (torch's SyncBatchNorm refuses CPU modules, so ``trainer=ddp`` on CPU trains without it)."""
    import torch

    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def _patch_size(name: str) -> int:
    """The registry's patch size (a CNN's output stride) of backbone ``name``: its one source of truth."""
    from datus.backbones import get_backbone_spec

    return get_backbone_spec(name).patch_size


def register_resolvers() -> None:
    """The ``${datus.*}`` resolvers the configs use (``trainer/ddp.yaml``, ``logger/wandb.yaml``), and
    a filter that drops Lightning's advertising lines from the log. Idempotent."""
    OmegaConf.register_new_resolver("datus.on_gpu", _on_gpu, replace=True)
    OmegaConf.register_new_resolver("datus.patch_size", _patch_size, replace=True)
    OmegaConf.register_new_resolver("datus.sweep_group", _sweep_group, replace=True)
    OmegaConf.register_new_resolver("datus.run_name", _run_name, replace=True)
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropAdvertising) for f in rank_zero.filters):
        rank_zero.addFilter(_DropAdvertising())
    quiet_libraries()


def quiet_libraries() -> None:
    """No library noise in a run's output: faiss's loader reports each CPU build it could not load
    (AVX512, AVX2: expected, it falls back), Lightning warns about its own use of a torch API."""
    import warnings

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
