"""Entry point: scene decomposition of a dataset split (python discover.py --help)."""

import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from datus.discovery import run_discovery
from datus.utils import instantiate_loggers, seed_everything

log = logging.getLogger("datus")

#: Config nodes whose values change the segments (a rerun with others must not mix them).
SETTINGS_KEYS = ("backbone", "dataset", "resize", "graph")


@hydra.main(version_base="1.3", config_path="conf", config_name="discover")
def main(cfg: DictConfig) -> float | None:
    seed_everything(cfg.seed)
    out_dir = Path(cfg.paths.output_dir)
    # Build the cheap, validating objects first: a bad config fails before the backbone loads.
    decomposer = instantiate(cfg.graph)
    resize = instantiate(cfg.resize)
    dataset = instantiate(cfg.dataset, transform=resize)
    backbone = instantiate(cfg.backbone)
    trainer = instantiate(cfg.trainer, logger=instantiate_loggers(cfg.logger) or False)
    log.info("%s on %r -> %s", backbone.name, dataset, out_dir)
    settings = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in SETTINGS_KEYS}
    summary = run_discovery(
        backbone, decomposer, dataset, trainer, out_dir, settings=settings,
        batch_size=cfg.batch_size, num_workers=cfg.num_workers, shard_size=cfg.shard_size,
        num_pictures=cfg.num_pictures, overwrite=cfg.overwrite,
    )
    per_image = summary["per_image"]
    log.info(
        "%d images: %.1f communities, %.1f valid of %.1f segments per image; %d skipped",
        summary["images"], per_image["communities"], per_image["valid_segments"],
        per_image["segments"], len(summary["skipped"]),
    )
    log.info("pictures: %s  summary: %s", summary["pictures_dir"], out_dir / "summary.json")
    return None


if __name__ == "__main__":
    main()
