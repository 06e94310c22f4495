"""Compare runs without a dashboard: ``python -m datus.report SWEEP_DIR``.

Gathers every run's ``metrics.json`` below ``SWEEP_DIR`` with the settings that produced it
(from Hydra's ``.hydra/config.yaml``), writes ``report.md`` and ``report.csv`` and a plot of
mIoU against K per backbone (``report.png``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

import yaml

from datus.io import atomic_write, save_figure
from datus.runs import FAILED_RUN

COLUMNS = ("run", "method", "backbone", "k", "miou", "pixel_accuracy", "mean_f1", "coverage", "majority_miou", "failed")


def _method_name(run: Path, config: dict) -> str:
    """The run's method as its summary names it (older runs: the ``method`` string of the config)."""
    summary = run / "summary.json"
    if summary.is_file():
        name = json.loads(summary.read_text()).get("method")
        if isinstance(name, str):
            return name
    method = _setting(config, "method")
    return method if isinstance(method, str) else "datus"


def _backbone_name(run: Path, config: dict) -> str:
    """The backbone the run read (its summary's; ``none`` for a method on pixels, e.g. W-Net)."""
    summary = run / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        if "backbone" in data:
            return data["backbone"] or "none"
    return _setting(config, "backbone", "name") or "?"


def _setting(config: dict, *path: str) -> Any:
    node: Any = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _config(run: Path) -> dict:
    """The run's composed config (``.hydra/config.yaml``), or {} when it has none."""
    path = run / ".hydra" / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per ``metrics.json`` under ``sweep_dir``, sorted by backbone, method and K."""
    rows = []
    root = Path(sweep_dir)
    for metrics_path in sorted(root.rglob("metrics.json")):
        run = metrics_path.parent
        metrics = json.loads(metrics_path.read_text())
        config = _config(run)
        rows.append({
            "run": str(run.relative_to(root)) or ".",
            "method": _method_name(run, config),
            "backbone": _backbone_name(run, config),
            "k": _setting(config, "k") or _setting(config, "labeling", "k") or metrics.get("num_clusters"),
            "miou": 100 * metrics["miou"],
            "pixel_accuracy": 100 * metrics["pixel_accuracy"],
            "mean_f1": 100 * metrics["mean_f1"],
            "coverage": 100 * metrics["coverage"],
            "majority_miou": 100 * metrics["majority"]["miou"] if "majority" in metrics else None,
            "failed": "",
        })
    for failed_path in sorted(root.rglob(FAILED_RUN)):  # failed jobs: a row each, never dropped
        run = failed_path.parent
        if (run / "metrics.json").is_file():
            continue  # a rerun of that job succeeded
        config = _config(run)
        rows.append({"run": str(run.relative_to(root)) or ".", "method": _method_name(run, config),
                     "backbone": _backbone_name(run, config), "k": _setting(config, "k"), "miou": None,
                     "pixel_accuracy": None, "mean_f1": None, "coverage": None, "majority_miou": None,
                     "failed": json.loads(failed_path.read_text()).get("error", "failed")})
    return sorted(rows, key=lambda r: (str(r["backbone"]), str(r["method"]), r["k"] or 0, r["run"]))


def to_markdown(rows: list[dict[str, Any]]) -> str:
    fmt = lambda v: "" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]]):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    series: dict[str, list[tuple[int, float, float | None]]] = {}
    for r in rows:
        if r["k"] is not None and r["miou"] is not None:
            series.setdefault(f"{r['backbone']} ({r['method']})", []).append(
                (int(r["k"]), r["miou"], r.get("majority_miou")))
    for name, points in sorted(series.items()):
        points.sort()
        line = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{name}, Hungarian")[0]
        majority = [(p[0], p[2]) for p in points if p[2] is not None]
        if majority:  # K > classes: the many-to-one mapping, same colour, dashed
            ax.plot([p[0] for p in majority], [p[1] for p in majority], marker="s", linestyle="--",
                    color=line.get_color(), label=f"{name}, majority (K > classes)")
    ax.set_xlabel("K (clusters)")
    ax.set_ylabel("mIoU (honest, unlabelled = wrong, %)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m datus.report", description=__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="where to write report.* (default: SWEEP_DIR)")
    args = parser.parse_args(argv)
    rows = collect(args.sweep_dir)
    if not rows:
        raise SystemExit(f"no metrics.json under {args.sweep_dir}")
    out = args.out or args.sweep_dir
    markdown = to_markdown(rows)
    atomic_write(out / "report.md", lambda f: f.write(markdown.encode()))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "report.csv", lambda f: f.write(buffer.getvalue().encode()))
    save_figure(out / "report.png", plot(rows))
    print(markdown)
    failed = [r for r in rows if r["failed"]]
    if failed:
        print(f"{len(failed)} failed job(s), shown as failed rows: " + "; ".join(f"{r['run']}: {r['failed']}" for r in failed))
    print(f"written: {out / 'report.md'}, {out / 'report.csv'}, {out / 'report.png'}")
    return rows


if __name__ == "__main__":
    main()
