"""Why PriMaPs-EM does or does not beat its k-means start on a split (docs/peers.md).

PriMaPs-EM learns the labels its E-step makes: the teacher's majority label inside each proposal.
This scores (with the split's labels, honest protocol) the k-means start, those voted labels, and
the teacher along a short EM, for proposal variants that change nothing else:

    python experiments/primaps_diagnosis.py --data $DATA --dataset camvid --split val --k 11 \
        --variant default --variant centred --variant threshold=0.8 --variant crf --variant gt --steps 600

Variants: ``default`` (the paper's threshold 0.4, no CRF), ``crf`` (the proposals' dense CRF, as
``method=primaps``), ``centred`` (tokens centred per image before the cosine), ``threshold=T`` and
``gt`` (each image's ground-truth class regions as the proposals: reads labels, a check of the EM
mechanism only). ``--set`` passes discover.py overrides (e.g. ``method.lr=5e-4``). Features come
from the shared feature cache (computed where missing). One JSON line per variant goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def compose(args: argparse.Namespace):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from datus.cli.setup import register_resolvers

    register_resolvers()
    overrides = [f"dataset={args.dataset}", f"dataset.split={args.split}", f"paths.data_dir={args.data}",
                 f"k={args.k}", "method=primaps", "dataset.mask_size_mismatch=skip",
                 f"paths.output_dir={Path(tempfile.gettempdir()) / 'primaps_diagnosis'}", *args.set]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra_compose("discover", overrides=overrides)


def feature_index(cfg, dataset):
    """The split's cached token maps (the ones ``method=primaps`` reads), computed where missing."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from datus.features import FeatureCache, FeatureSpec
    from datus.runs import cache_settings

    settings = cache_settings(OmegaConf.to_container(cfg, resolve=True))
    cache = FeatureCache(cfg.cache_dir, Path(cfg.paths.output_dir) / "cache",
                         lambda: pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False))
    return cache.index(dataset, backbone=lambda: instantiate(cfg.backbone), backbone_settings=settings["backbone"],
                       resize=dataset.transform, spec=FeatureSpec(names=tuple(cfg.method.features)))


def proposals(index, dataset, variant: str, crf, label_scale: int) -> tuple[list, float]:
    """``(features, proposal map on the label grid)`` per image, and proposals per image."""
    from datus.masks import upsample_nearest
    from datus.primaps import median_filter, principal_masks, proposal_map

    threshold = float(variant.split("=")[1]) if variant.startswith("threshold=") else 0.4
    pairs, counts = [], []
    for i in sorted(index.entries):
        fmap = torch.from_numpy(np.asarray(index[i], dtype=np.float32))
        grid = tuple(fmap.shape[1:])
        if variant == "gt":  # no proposals computed: the image's ground-truth regions (void, 255, is background)
            full = np.asarray(dataset.load(i)["mask"]).astype(np.uint8)
            counts.append(len(np.setdiff1d(np.unique(full), [255])))
        else:
            tokens = fmap.flatten(1).T
            if variant == "centred":
                tokens = tokens - tokens.mean(dim=0)
            masks = median_filter(principal_masks(tokens, threshold=threshold), grid)
            masks = masks[masks.flatten(1).any(dim=1)]
            counts.append(len(masks))
            image = dataset.load(i)["image"].permute(1, 2, 0).numpy() if variant == "crf" else None
            size = index.orig_size(i) if image is None else image.shape[:2]
            full = proposal_map(masks, size, image, crf if variant == "crf" else None)
        labels = upsample_nearest(full, (grid[0] * label_scale, grid[1] * label_scale))
        pairs.append((fmap, torch.from_numpy(labels.astype(np.uint8))))
    return pairs, float(np.mean(counts))


def score(maps, index, dataset, k: int) -> dict[str, float]:
    """Honest mIoU and pixel accuracy of per-image label maps (any grid; upsampled nearest to the image)."""
    from datus.masks import upsample_nearest
    from datus.metrics import ClusterConfusion

    metric = ClusterConfusion(k, list(dataset.classes))
    for i, labels in zip(sorted(index.entries), maps):
        truth = np.asarray(dataset.load(i)["mask"])
        if truth.shape != tuple(index.orig_size(i)):  # a mask of another size than its photo: left out (SUIM)
            continue
        pred = upsample_nearest(np.asarray(labels, dtype=np.uint8), truth.shape)
        metric.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
    result = metric.compute()
    return {"miou": round(100 * result["miou"], 1), "acc": round(100 * result["pixel_accuracy"], 1)}


def teacher_maps(module, pairs) -> list[np.ndarray]:
    return [module.teacher_labels(f, tuple(p.shape)).numpy() for f, p in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument("--split", default="val")
    parser.add_argument("--k", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--steps", type=int, default=0, help="EM steps per variant (0: the E-step only)")
    parser.add_argument("--every", type=int, default=100, help="score the teacher every this many steps")
    parser.add_argument("--out", default=None, help="append one JSON line per variant here")
    parser.add_argument("--set", action="append", default=[], metavar="OVERRIDE",
                        help="a discover.py override for every variant, e.g. method.lr=5e-4")
    args = parser.parse_args()

    from hydra.utils import instantiate

    from datus.primaps import PriMaPsModule, majority_vote, vote_kept

    warnings.filterwarnings("ignore", message=".*self.log.*")  # the module logs through a Trainer; none here
    cfg = compose(args)
    dataset = instantiate(cfg.dataset, transform=instantiate(cfg.resize))
    index = feature_index(cfg, dataset)
    primaps = instantiate(cfg.method).primaps
    centroids = torch.from_numpy(primaps.kmeans_start(index, k=args.k, seed=args.seed))
    for variant in args.variant or ["default"]:
        start = time.monotonic()
        pairs, per_image = proposals(index, dataset, variant, primaps.proposal_crf, primaps.label_scale)
        torch.manual_seed(args.seed)
        module = PriMaPsModule(centroids, decay=primaps.decay, ema_every=primaps.ema_every, lr=primaps.lr,
                               gamma=primaps.gamma)
        start_maps = teacher_maps(module, pairs)
        voted = [majority_vote(torch.from_numpy(m), p, args.k).numpy() for m, (_, p) in zip(start_maps, pairs)]
        kept = [vote_kept(torch.from_numpy(m), p, args.k) for m, (_, p) in zip(start_maps, pairs)]
        row = {"dataset": args.dataset, "split": args.split, "k": args.k, "seed": args.seed, "variant": variant,
               "proposals_per_image": round(per_image, 2), "start": score(start_maps, index, dataset, args.k),
               "voted": score(voted, index, dataset, args.k),
               "kept": round(sum(a for a, _, _ in kept) / sum(b for _, b, _ in kept), 3), "em": []}
        print(json.dumps(row), flush=True)
        optimiser = module.configure_optimizers()
        rng = np.random.default_rng(args.seed)
        for step in range(1, args.steps + 1):  # the module's own training step; the teacher as Lightning's hook does
            if step > 1 and (step - 1) % primaps.ema_every == 0:
                module.update_teacher()
            batch = [pairs[j] for j in rng.choice(len(pairs), min(primaps.batch_size, len(pairs)), replace=False)]
            loss = module.training_step(batch, step)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % args.every == 0 or step == args.steps:
                maps = teacher_maps(module, pairs)
                alive = int(np.count_nonzero(np.bincount(np.concatenate([m.ravel() for m in maps]), minlength=args.k)))
                row["em"].append({"step": step, "loss": round(float(loss.detach()), 4), "clusters": alive,
                                  **score(maps, index, dataset, args.k)})
                print(json.dumps(row["em"][-1]), flush=True)
        row["minutes"] = round((time.monotonic() - start) / 60, 1)
        if args.out:
            with open(args.out, "a") as out:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
