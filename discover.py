"""Entry point: the main job (python discover.py --help for the config)."""

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from datus.preview import run_preview
from datus.utils import instantiate_loggers, seed_everything

log = logging.getLogger("datus")


@hydra.main(version_base="1.3", config_path="conf", config_name="discover")
def main(cfg: DictConfig) -> float | None:
    seed_everything(cfg.seed)
    out_dir = Path(cfg.paths.output_dir)
    backbone = instantiate(cfg.backbone)
    dataset = instantiate(cfg.dataset, transform=instantiate(cfg.resize))
    trainer = instantiate(cfg.trainer, logger=instantiate_loggers(cfg.logger) or False)
    log.info("%s on %r: %d images -> %s", backbone.name, dataset, len(dataset), out_dir)
    summary = run_preview(
        backbone, dataset, trainer, out_dir,
        feature=cfg.feature, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
    )
    log.info(
        "%d images, %.1f ms/image in the backbone; pictures in %s",
        summary["images"], summary["backbone_ms_per_image"] or 0.0, summary["pictures"],
    )
    return None


if __name__ == "__main__":
    main()
