"""Choose the default decomposition by the final pseudo-mask quality (honest mIoU).

Backbone features of a split are computed once and kept in memory; every configuration of
the graph / Louvain / segment features / k-means is then scored with the real metric.

    python experiments/tune_decomposition.py --root DIR --split val [--images N] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from datus.backbones import build_backbone
from datus.data import CamVid
from datus.discovery import Affinity, Louvain, SceneDecomposer
from datus.labeling import KMeans
from datus.masks import patch_labels, upsample_labels
from datus.metrics import ClusterConfusion
from datus.transforms import ResizeForBackbone


def extract(root: str, split: str, images: int | None, size: int, mode: str, cache_dir: str | None):
    backbone = build_backbone("dinov2_vits14", weights="packaged", cache_dir=cache_dir)
    data = CamVid(root, split, transform=ResizeForBackbone(size, 14, mode))
    n = len(data) if images is None else min(images, len(data))
    rows = []
    for i in range(n):
        item = data[i]
        out = backbone(backbone.normalize(item["image"][None]))
        rows.append({
            "keys": out.keys[0].half(), "tokens": out.tokens[0].half(), "grid": out.grid,
            "truth": item["mask"].numpy(), "key_bias": backbone.key_bias(),
        })
    return rows, data.classes


def score(rows, classes, decomposer, k, weighted=False, fill=True, seed=0):
    t0 = time.perf_counter()
    decs = [decomposer(r[decomposer.feature].float(), r["grid"], r[decomposer.segment_feature].float(),
                       r["key_bias"]) for r in rows]
    t1 = time.perf_counter()
    feats = np.concatenate([d.segment_features[d.segment_valid] for d in decs])
    sizes = np.concatenate([d.segment_sizes[d.segment_valid] for d in decs]).astype(np.float32)
    km = KMeans(k, seed=seed).fit(feats, weights=sizes if weighted else None)
    metric = ClusterConfusion(k, list(classes))
    for r, d in zip(rows, decs):
        lab = km.predict(d.segment_features)
        if not fill:
            lab = np.where(d.segment_valid, lab, -1)
        mask = upsample_labels(patch_labels(d.segments, lab), r["truth"].shape)
        metric.update(torch.from_numpy(mask.astype(np.int64)), torch.from_numpy(r["truth"]))
    res = metric.compute()
    return {
        "miou": 100 * res["miou"], "pixel_accuracy": 100 * res["pixel_accuracy"], "coverage": 100 * res["coverage"],
        "valid_segments_per_image": float(np.mean([d.num_valid for d in decs])),
        "communities_per_image": float(np.mean([d.communities.max() + 1 for d in decs])),
        "decompose_ms_per_image": 1e3 * (t1 - t0) / len(rows),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--k", type=int, default=11)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rows, classes = extract(args.root, args.split, args.images, args.size, "short_side", args.cache_dir)
    results = []
    grid = itertools.product(
        ["keys", "tokens"],            # graph feature
        [5, 10, 20],                   # knn
        [1.0, 2.0, 4.0],               # Louvain resolution
        ["tokens", "keys"],            # segment feature
        [False, True],                 # size-weighted k-means
    )
    for feature, knn, resolution, seg_feature, weighted in grid:
        dec = SceneDecomposer(Affinity(kind="cosine", debias="center", knn=knn), Louvain("igraph", resolution),
                              feature=feature, segment_feature=seg_feature, min_patches=5)
        row = {"graph.feature": feature, "knn": knn, "resolution": resolution,
               "segment_feature": seg_feature, "weighted": weighted}
        row.update(score(rows, classes, dec, args.k, weighted))
        results.append(row)
        print(json.dumps(row), flush=True)
    best = max(results, key=lambda r: r["miou"])
    print("best:", json.dumps(best))
    if args.out:
        args.out.write_text(json.dumps({"split": args.split, "images": len(rows), "size": args.size,
                                        "results": results}, indent=1))


if __name__ == "__main__":
    main()
