"""``python -m datus.bench speed|discovery|memory|quality [options] [overrides of conf/discover.yaml]``.

  python -m datus.bench speed --images 40 dataset=camvid dataset.root=DIR dataset.split=val
  python -m datus.bench discovery --images 40 dataset=camvid dataset.root=DIR dataset.split=val
  python -m datus.bench memory --images 50,367 dataset=camvid dataset.root=DIR dataset.split=train
  python -m datus.bench quality --data DIR_WITH_camvid_AND_suim --out out/quality
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datus.io import write_json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datus.bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    speed = sub.add_parser("speed", help="every speed ratio of the README in one run: default discovery vs "
                           "the backbone, the paper's dense graphs, the paper's whole run vs its forwards and "
                           "vs the authors' per-image loop")
    speed.add_argument("--images", type=int, default=40, help="images for the discovery throughput benchmarks")
    speed.add_argument("--authors-images", type=int, default=20, help="images for the authors' (slow) loop")
    speed.add_argument("--reference-images", type=int, default=10, help="images for slow python-louvain")
    speed.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    speed.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=camvid dataset.root=DIR")
    disc = sub.add_parser("discovery", help="backbone vs discovery throughput, Louvain backends, memory")
    disc.add_argument("--images", type=int, default=50, help="first N images of the split")
    disc.add_argument("--reference-images", type=int, default=10, help="images for slow python-louvain")
    disc.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    disc.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=camvid dataset.root=DIR")
    mem = sub.add_parser("memory", help="peak RSS of discovery and labelling at two (or more) split sizes")
    mem.add_argument("--images", default="50,367", help="comma-separated split sizes (first N images)")
    mem.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    mem.add_argument("--keep", type=Path, default=None, help="keep the runs' folders under this folder")
    mem.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=camvid dataset.root=DIR")
    quality = sub.add_parser("quality", help="named configurations x datasets x k-means seeds (a study, "
                             "conf/quality/*.yaml): mIoU and pixel accuracy as mean ± std, paired differences "
                             "to a baseline; table, JSON and a picture; resumable")
    quality.add_argument("--study", default="default", help="conf/quality/<name>.yaml, or a path to a study file")
    quality.add_argument("--data", type=Path, default=None,
                         help="folder holding the datasets (paths.data_dir; default: $DATUS_DATA or data)")
    quality.add_argument("--seeds", default=None, help="comma-separated k-means seeds (default: the study's)")
    quality.add_argument("--configs", default=None, help="only these configurations (and what they read)")
    quality.add_argument("--datasets", default=None, help="only these datasets (and their fit_on)")
    quality.add_argument("--out", type=Path, default=Path("out/quality"), help="where runs and results go")
    quality.add_argument("--report", action="store_true",
                         help="run nothing: write the tables from the runs finished in --out (with the options "
                              "the study ran with, e.g. --data), as while another call is running the study")
    quality.add_argument("--merge", type=Path, action="append", default=[], metavar="QUALITY_JSON",
                         help="an earlier call's quality.json (another machine, a cluster job, a cleared scratch): "
                              "its runs count as finished where --out has none (repeatable)")
    quality.add_argument("overrides", nargs="*", help="overrides for every run, e.g. cache_dir=DIR")
    child = sub.add_parser("memory-child", help=argparse.SUPPRESS)
    child.add_argument("--images", type=int, required=True)
    child.add_argument("--stage", required=True)
    child.add_argument("--work", type=Path, required=True)
    child.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    if args.bench == "memory-child":
        from datus.bench.memory import child as run

        print(json.dumps(run(args.images, args.stage, args.work, args.overrides)))
        return
    if args.bench == "memory":
        from datus.bench.memory import bench_memory, format_memory

        result = bench_memory(sorted(int(n) for n in args.images.split(",")), args.overrides, keep=args.keep)
        _report(format_memory(result), result, args.out)
        return

    if args.bench == "quality":
        from datus.bench.quality import bench_quality, load_study, to_markdown

        def split(option: str, value: str | None, example: str) -> list[str] | None:
            names = None if value is None else [v.strip() for v in value.split(",")]
            if names is not None and not all(names):  # `--configs ""` would otherwise mean every row
                raise SystemExit(f"error: {option} {value!r}: comma-separated, none empty (e.g. {option} {example})")
            return names

        if args.report and (args.seeds or args.configs or args.datasets):
            raise SystemExit("error: --report writes the tables of the whole study: leave out --seeds, --configs "
                             "and --datasets (they narrow what a call runs)")
        seeds = split("--seeds", args.seeds, "0,1,2")
        if seeds is not None and not all(s.isdigit() for s in seeds):
            raise SystemExit(f"error: --seeds {args.seeds}: comma-separated whole numbers >= 0 (e.g. --seeds 0,1,2)")
        study = load_study(args.study, seeds=None if seeds is None else [int(s) for s in seeds],
                           configurations=split("--configs", args.configs, "defaults,kmeans_patches"),
                           datasets=split("--datasets", args.datasets, "camvid_val,suim"))
        extra = [*([f"paths.data_dir={args.data.expanduser().resolve()}"] if args.data else []), *args.overrides]
        # the tables cover the whole study: a narrowed call adds its runs to them, it does not replace them
        result = bench_quality(study, args.out.expanduser().resolve(), extra, report=load_study(args.study),
                               run=not args.report, merge=[p.expanduser().resolve() for p in args.merge])
        print(to_markdown(result))
        print(f"written: {args.out / 'quality.md'}, quality.json, quality.png")
        if result["failed"]:
            raise SystemExit("failed: " + "; ".join(f"{k}: {v}" for k, v in result["failed"].items()))
        return

    if args.bench == "speed":
        from datus.bench.speed import bench_speed, format_speed

        result = bench_speed(args.overrides, images=args.images, authors_images=args.authors_images,
                             reference_images=args.reference_images)
        _report(format_speed(result), result, args.out)
        return

    from hydra.utils import instantiate

    from datus.bench.discovery import bench_discovery, discovery_objects, format_report

    cfg, decomposer, dataset = discovery_objects(args.overrides)
    backbone = instantiate(cfg.backbone)
    result = bench_discovery(backbone, decomposer, dataset, images=args.images, batch_size=cfg.batch_size,
                             num_workers=cfg.num_workers, reference_images=args.reference_images)
    result["overrides"] = args.overrides
    _report(format_report(result), result, args.out)
    if not args.out:
        print(json.dumps({k: v for k, v in result.items() if k != "backends"}, indent=1))


def _report(text: str, result: dict, out: Path | None) -> None:
    """Print a benchmark's table; with ``--out``, also write its numbers as JSON there."""
    print(text)
    if out:
        write_json(out, result)
        print(f"written: {out}")


if __name__ == "__main__":
    from datus.cli.errors import run_command

    run_command(main)
