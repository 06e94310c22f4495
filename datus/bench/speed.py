"""Every speed ratio the README states, measured side by side in one run (``python -m datus.bench speed``).

1. Default discovery against the backbone alone (target: at least 0.97 of its throughput).
2. The paper's dense 256-node graphs: construction + Louvain per image (target: at most 15 ms) and
   modularity against python-louvain, the authors' library (target: within 1%).
3. The paper's whole ``discover.py`` run (start-up to ``metrics.json``) against the forwards it needs
   (target: at most 1.15x), and its speed-up over the authors' per-image loop.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from datus.bench.discovery import bench_discovery, discovery_objects
from datus.bench.paper import authors_loop, crops_per_batch, forward_floor, whole_run

#: the setting the README calls the authors' (224x224 squash, dense binary key graph, crop CLS)
PAPER = "experiment=datus_paper"
TARGETS = {"default_throughput_ratio": (">=", 0.97), "paper_graph_ms": ("<=", 15.0),
           "paper_modularity_vs_python_louvain": (">=", 0.99), "paper_run_over_forwards": ("<=", 1.15)}


def _discover_script() -> Path:
    script = Path(__file__).resolve().parents[2] / "discover.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: run the speed benchmark from a clone of the repository")
    return script


def bench_speed(overrides: list[str], *, images: int = 40, authors_images: int = 20,
                reference_images: int = 10) -> dict[str, Any]:
    """Run the three measurements on the split the ``overrides`` name; returns every number."""
    from hydra.utils import instantiate

    script = _discover_script()
    cfg, decomposer, dataset = discovery_objects(overrides)
    backbone = instantiate(cfg.backbone)
    _step(1, f"default discovery vs the backbone alone, {images} images")
    default = bench_discovery(backbone, decomposer, dataset, images=images, batch_size=cfg.batch_size,
                              num_workers=cfg.num_workers, reference_images=reference_images)

    paper_overrides = [PAPER, *overrides]
    pcfg, pdecomposer, pdataset = discovery_objects(paper_overrides)
    _step(2, f"the paper's graphs and discovery, {images} images")
    paper_graphs = bench_discovery(backbone, pdecomposer, pdataset, images=images, batch_size=pcfg.batch_size,
                                   num_workers=pcfg.num_workers, reference_images=reference_images)
    backend = paper_graphs["backends"][pdecomposer.louvain.backend]

    _step(3, f"the paper's whole discover.py run on the split ({len(pdataset)} images), then its forwards alone")
    with tempfile.TemporaryDirectory() as tmp:
        run = whole_run(paper_overrides, Path(tmp) / "run", script=script)
        crops = crops_per_batch(Path(tmp) / "run" / "segments", pcfg.batch_size)
    size = tuple(pdataset[0]["image"].shape[-2:])
    floor = forward_floor(backbone, images=run["summary"]["images"], batch_size=pcfg.batch_size, size=size,
                          crops=crops, crop_size=pcfg.labeling.crop_size)
    _step(4, f"the authors' per-image loop, {authors_images} images")
    authors = authors_loop(backbone, pdecomposer, pdataset, authors_images, crop_size=pcfg.labeling.crop_size)
    n = run["summary"]["images"]
    ratios = {
        "default_throughput_ratio": default["throughput_ratio"],
        "paper_graph_ms": paper_graphs["graph_construction_ms"] + backend["louvain_ms"],
        "paper_modularity_vs_python_louvain": backend["modularity_vs_reference"],
        "paper_run_over_forwards": run["seconds"] / floor["total"],
        "paper_speedup_over_authors": authors["total_per_image"] * n / run["seconds"],
    }
    return {
        "overrides": overrides, "ratios": ratios, "targets": {k: list(v) for k, v in TARGETS.items()},
        "default_discovery": default, "paper_discovery": paper_graphs,
        "paper_run": {"images": n, "seconds": run["seconds"], "stages": run["stages"],
                      "crops": sum(crops), "metrics": run["summary"].get("metrics"),
                      "ms_per_image": run["summary"].get("ms_per_image"),
                      "segment_features_seconds": run["summary"].get("segment_features_seconds"),
                      "discovery_seconds": run["summary"].get("seconds_this_run")},
        "paper_forwards": floor, "authors": authors,
    }


def _step(number: int, what: str) -> None:
    """Say which measurement runs (the whole benchmark takes minutes and shows no bar of its own)."""
    print(f"[{number}/4] {what}", file=sys.stderr, flush=True)


def _meets(name: str, value: float) -> str:
    if name not in TARGETS:
        return ""
    op, target = TARGETS[name]
    ok = value >= target if op == ">=" else value <= target
    return f"(target {op} {target:g}: {'met' if ok else 'MISSED'})"


def format_speed(result: dict[str, Any]) -> str:
    """The ratios with their targets, then where the paper run's time went."""
    r, run, floor, authors = result["ratios"], result["paper_run"], result["paper_forwards"], result["authors"]
    d, p = result["default_discovery"], result["paper_discovery"]
    lines = [
        f"default discovery: {d['discovery_images_per_s']:.3f} images/s against the backbone's "
        f"{d['backbone_images_per_s']:.3f}: ratio {r['default_throughput_ratio']:.3f} "
        f"{_meets('default_throughput_ratio', r['default_throughput_ratio'])}",
        f"paper graphs ({p['grid']} patches): construction {p['graph_construction_ms']:.1f} ms + Louvain "
        f"{p['backends'][p['default_backend']]['louvain_ms']:.1f} ms = {r['paper_graph_ms']:.1f} ms/image "
        f"{_meets('paper_graph_ms', r['paper_graph_ms'])}",
        f"paper graphs: modularity {r['paper_modularity_vs_python_louvain']:.3f} x python-louvain's "
        f"{_meets('paper_modularity_vs_python_louvain', r['paper_modularity_vs_python_louvain'])}; "
        f"python-louvain {p['backends']['python-louvain']['louvain_ms']:.0f} ms/image",
        f"paper run: {run['seconds']:.1f} s for {run['images']} images ({run['crops']} crops); its forwards alone "
        f"{floor['total']:.1f} s (images {floor['image_forwards']:.1f} s, crops {floor['crop_forwards']:.1f} s): "
        f"ratio {r['paper_run_over_forwards']:.3f} {_meets('paper_run_over_forwards', r['paper_run_over_forwards'])}",
        f"authors' per-image loop ({authors['images']} images): {authors['total_per_image']:.3f} s/image "
        f"(forwards {authors['forwards_per_image']:.3f} s): ours is {r['paper_speedup_over_authors']:.2f}x faster "
        "(whole run, start-up included)",
        "paper run, seconds per stage:",
    ]
    lines += [f"  {name:<56}{seconds:>8.1f}" for name, seconds in run["stages"].items()]
    lines += ["authors' loop, seconds per image:"]
    lines += [f"  {name:<56}{seconds:>8.3f}" for name, seconds in authors["seconds_per_image"].items()]
    return "\n".join(lines)
