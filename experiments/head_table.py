"""The feature-head table of the README: pseudo masks without and with ``head=stego``, over k-means seeds.

Runs the README's ``discover.py`` commands as subprocesses and collects their numbers:

    python experiments/head_table.py --root $C --out experiments/bench/head_camvid.json

For each split and configuration (``--configs``: name=overrides, ``;``-separated; default: the
previous defaults (plain k-means), our defaults (3K clusters merged into K), the feature head alone
and the head with our defaults) and each k-means seed (``labeling.kmeans.seed``; the backbone pass,
the head and the segments come from the cache after the first seed), the honest mIoU, pixel
accuracy and per-class IoU, the run's wall minutes and peak RSS, and the head's training minutes.
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
                   "head=head=stego labeling.kmeans.overcluster=1;head_and_defaults=head=stego")


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
    parser.add_argument("--seeds", default="0,1,2", help="k-means seeds (labeling.kmeans.seed)")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="name=space-separated overrides, ';'-separated")
    parser.add_argument("--work", type=Path, default=Path("out/head_table"))
    parser.add_argument("--cache-dir", default=None, help="discover.py's cache_dir (default: paths.cache_dir)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    done = {(r["split"], r["config"], r["seed"]) for r in rows}
    configs = [c.split("=", 1) for c in args.configs.split(";")]
    for split in args.splits.split(","):
        for name, overrides in configs:
            for seed in (int(s) for s in args.seeds.split(",")):
                if (split, name, seed) in done:
                    continue
                out = args.work / f"{split}_{name}_s{seed}"
                command = ["python", "discover.py", "dataset=camvid", f"dataset.root={args.root}",
                           f"dataset.split={split}", "k=11", f"labeling.kmeans.seed={seed}", "logger=none",
                           "trainer.enable_progress_bar=false", f"hydra.run.dir={out}", *overrides.split()]
                if args.cache_dir:
                    command.append(f"cache_dir={args.cache_dir}")
                minutes, rss = run(command, args.work / f"{split}_{name}_s{seed}.log")
                metrics = json.loads((out / "metrics.json").read_text())
                summary = json.loads((out / "summary.json").read_text())
                head = summary.get("feature_head") or {}
                rows.append({"split": split, "config": name, "overrides": overrides, "seed": seed,
                             "miou": metrics["miou"], "pixel_accuracy": metrics["pixel_accuracy"],
                             "per_class_iou": metrics["per_class_iou"], "minutes": round(minutes, 2),
                             "peak_rss_gb": round(rss, 2),
                             "head_training_minutes": None if head.get("training_seconds") is None
                             else round(head["training_seconds"] / 60, 2)})
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rows, indent=1) + "\n")
                print(split, name, seed, round(metrics["miou"] * 100, 1), f"{minutes:.1f} min", flush=True)


if __name__ == "__main__":
    main()
