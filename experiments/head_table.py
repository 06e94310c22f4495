"""The method tables of the README: pseudo masks of several configurations on CamVid, over seeds.

Runs the README's ``discover.py`` commands as subprocesses and collects their numbers:

    python experiments/head_table.py --root $C --out experiments/bench/head_camvid.json
    python experiments/head_table.py --root $C --out experiments/bench/wnet_camvid.json \
        --configs "kmeans_patches=method=kmeans_patches labeling.kmeans.overcluster=1;defaults=;wnet=method=wnet"

``--seed-setting seed`` varies the run's seed (a W-Net's training seed) instead of the k-means seed.

For each split and configuration (``--configs``: name=overrides, ``;``-separated; default: the
previous defaults (plain k-means), our defaults (3K clusters merged into K), the feature head alone
and the head with our defaults) and each k-means seed (``labeling.kmeans.seed``; the backbone pass,
the head and the segments come from the cache after the first seed), the honest mIoU, pixel
accuracy and per-class IoU, the run's wall minutes and peak RSS, and the head's or the W-Net's
training minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ("previous=labeling.kmeans.overcluster=1;defaults=;"
                   "head=feature_head=stego labeling.kmeans.overcluster=1;head_and_defaults=feature_head=stego")


def run(command: list[str], log: Path) -> tuple[float, float]:
    """Wall minutes and peak RSS (GB) of ``command``'s process (its output in ``log``)."""
    start = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise subprocess.CalledProcessError(os.waitstatus_to_exitcode(status), command, f"see {log}")
    return (time.monotonic() - start) / 60, usage.ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="CamVid root")
    parser.add_argument("--splits", default="val,train")
    parser.add_argument("--seeds", default="0,1,2", help="seeds (of --seed-setting)")
    parser.add_argument("--seed-setting", default="labeling.kmeans.seed",
                        help="the setting the seeds go to (seed: the run's, e.g. a W-Net's training seed)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="name=space-separated overrides, ';'-separated")
    parser.add_argument("--work", type=Path, default=Path("out/head_table"))
    parser.add_argument("--cache-dir", default=None, help="discover.py's cache_dir (default: paths.cache_dir)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    done = {(r["split"], r["config"], r["seed"], r.get("seed_setting", "labeling.kmeans.seed")) for r in rows}
    configs = [c.split("=", 1) for c in args.configs.split(";")]
    for split in args.splits.split(","):
        for name, overrides in configs:
            for seed in (int(s) for s in args.seeds.split(",")):
                if (split, name, seed, args.seed_setting) in done:
                    continue
                tag = "" if args.seed_setting == "labeling.kmeans.seed" else args.seed_setting.replace(".", "_")
                out = args.work / f"{split}_{name}_{tag}s{seed}"
                command = ["python", "discover.py", "dataset=camvid", f"dataset.root={args.root}",
                           f"dataset.split={split}", "k=11", f"{args.seed_setting}={seed}", "logger=none",
                           "trainer.enable_progress_bar=false", f"hydra.run.dir={out}", *overrides.split()]
                if args.cache_dir:
                    command.append(f"cache_dir={args.cache_dir}")
                minutes, rss = run(command, out.with_suffix(".log"))
                metrics = json.loads((out / "metrics.json").read_text())
                summary = json.loads((out / "summary.json").read_text())
                head = summary.get("feature_head") or {}
                wnet = summary.get("wnet") or {}
                rows.append({"split": split, "config": name, "overrides": overrides, "seed": seed,
                             "seed_setting": args.seed_setting,
                             "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
                             "per_class_iou": metrics["per_class_iou"], "minutes": round(minutes, 2),
                             "peak_rss_gb": round(rss, 2),
                             "head_training_minutes": None if head.get("training_seconds") is None
                             else round(head["training_seconds"] / 60, 2),
                             "wnet_training_minutes": wnet.get("training_minutes"),
                             "wnet_trained_this_run": wnet.get("trained_this_run")})
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rows, indent=1) + "\n")
                print(split, name, seed, round(metrics["miou"] * 100, 1), f"{minutes:.1f} min", flush=True)


if __name__ == "__main__":
    main()
