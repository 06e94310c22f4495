"""The command that turns DINO's attention maps into masks, draws them and scores them as foreground.

``python -m datus.attention [--mass 0.6] [--things A,B] [--pictures 4] [--out DIR] [overrides of conf/discover.yaml]``

Per head of the backbone's last block, the patches holding ``mass`` of the CLS attention form a
mask (the DINO paper's figure, :func:`datus.foreground.attention_masks`). Pictures of the first
images show each head's map and mask; where the split has ground truth and the dataset names its
"thing" classes (CamVid: Car, Pedestrian, Bicyclist, SignSymbol, Pole, Fence; ``--things`` to
choose), every image is scored: IoU of each head's mask, of the mask of the heads' mean attention,
and, for scale, of calling everything foreground. Writes ``attention.json`` and ``attention.md``.
"""

from __future__ import annotations

import logging

log = logging.getLogger("datus")


def _table(rows: list[dict]) -> str:
    lines = ["| mask | IoU with things | mean Jaccard per image | foreground kept (% of pixels) |",
             "|---|---|---|---|"]
    lines += [f"| {r['mask']} | {r['iou']:.1f} | {r['mean_jaccard']:.1f} | {r['foreground_fraction']:.1f} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    import argparse
    from pathlib import Path

    import numpy as np
    import torch
    from hydra.utils import instantiate
    from rich.progress import track

    from datus.cli.compose import compose_config
    from datus.figures import attention_mask_figure
    from datus.foreground import ForegroundScore, attention_masks, thing_mask
    from datus.io import save_figure, write_json
    from datus.masks import upsample_nearest

    parser = argparse.ArgumentParser(prog="python -m datus.attention", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mass", type=float, default=0.6, help="share of each head's CLS attention the mask keeps")
    parser.add_argument("--things", default=None, help="comma-separated foreground classes (default: the dataset's)")
    parser.add_argument("--pictures", type=int, default=4, help="draw the first N images")
    parser.add_argument("--out", type=Path, default=Path("attention"))
    parser.add_argument("overrides", nargs="*", help="e.g. backbone=dino_vits8 dataset=camvid dataset.root=DIR")
    args = parser.parse_intermixed_args(argv)
    if not 0 < args.mass <= 1:
        raise ValueError(f"--mass={args.mass} must be in (0, 1]")
    if args.pictures < 0:
        raise ValueError(f"--pictures={args.pictures} must be >= 0")
    cfg = compose_config("discover", args.overrides)
    dataset = instantiate(cfg.dataset, transform=instantiate(cfg.resize))
    things = [t.strip() for t in args.things.split(",") if t.strip()] if args.things else list(dataset.things)
    scoring = dataset.has_masks and bool(things)
    if scoring:
        thing_mask(np.zeros((1, 1), dtype=np.int64), list(dataset.classes), things)  # unknown names: fail now
    elif dataset.has_masks:
        log.warning("%s names no thing classes: pass --things to score the masks; drawing only", dataset.name)
    backbone = instantiate(cfg.backbone)
    count = len(dataset) if scoring else min(args.pictures, len(dataset))
    scores: dict[str, ForegroundScore] = {}
    for i in track(range(count), description=f"attention masks of {count} images", transient=True):
        item = dataset[i]
        out = backbone(backbone.normalize(item["image"][None]))
        if out.attentions is None:
            raise ValueError(f"{backbone.name} has no attention maps (a CNN): choose a ViT backbone")
        attn = out.attentions[0].float()  # (heads, N)
        heads = attn.shape[0]
        maps = torch.cat([attn, attn.mean(dim=0, keepdim=True)])  # each head, then the heads' mean
        masks = attention_masks(maps, args.mass).reshape(heads + 1, *out.grid).numpy()
        size = tuple(item.get("orig_size", item["image"].shape[-2:]))
        truth = None
        if scoring:
            gt = item["mask"].numpy()
            truth, valid = thing_mask(gt, list(dataset.classes), things), gt != 255
            names = [f"head {h}" for h in range(heads)] + ["mean of the heads' attention", "everything foreground"]
            predictions = [upsample_nearest(m.astype(np.uint8), size).astype(bool) for m in masks]
            predictions.append(np.ones(size, dtype=bool))
            for name, predicted in zip(names, predictions):
                scores.setdefault(name, ForegroundScore()).update(predicted, truth, valid)
        if i < args.pictures:
            image = dataset.load(i)["image"].permute(1, 2, 0).numpy()
            shown = (attn / attn.amax(dim=-1, keepdim=True).clamp_min(1e-12)).reshape(heads, *out.grid).numpy()
            fig = attention_mask_figure(image, shown, masks[:heads], truth, f"{item['stem']} ({backbone.name})",
                                        mass=args.mass)
            print(save_figure(args.out / "pictures" / f"{item['stem']}.png", fig))
    if not scoring:
        return None
    rows = [{"mask": name, **score.result()} for name, score in scores.items()]
    head_rows = [r for r in rows if r["mask"].startswith("head ")]
    best = max(head_rows, key=lambda r: r["iou"])
    rows.insert(len(head_rows), {**best, "mask": f"best head ({best['mask']}, chosen on this split)"})
    report = {"backbone": backbone.name, "dataset": dataset.name, "split": dataset.split, "images": count,
              "mass": args.mass, "things": things, "rows": rows}
    write_json(args.out / "attention.json", report)
    table = _table(rows)
    (args.out / "attention.md").write_text(
        f"Attention-map masks ({args.mass:.0%} of the CLS attention) of {backbone.name} vs the things "
        f"({', '.join(things)}) of {dataset.name} {dataset.split}, {count} images:\n\n{table}\n")
    print(table)
    print(args.out / "attention.json")
    return report


if __name__ == "__main__":
    from datus.cli.errors import run_command

    run_command(main)
