"""Memory and time of the windowed soft N-cut against the dense (HW)^2 matrix it avoids.

    python experiments/ncut_memory.py --out experiments/bench/ncut_memory.json

For each image size (default: the CPU preset's 96x128, the issue's example 224x288, and two larger), K = 11 and
the paper's radius 5: the loss's forward + backward on one image, in a fresh process each, its peak
RSS above the process's baseline and its seconds; beside it, the float32 bytes a dense affinity
matrix of that image would take.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def measure(height: int, width: int, k: int, radius: float) -> dict:
    import torch

    from datus.wnet import SoftNCut

    torch.manual_seed(0)
    warm = torch.randn(1, k, 16, 16, requires_grad=True)  # thread pools and allocator in the baseline
    SoftNCut(radius=radius)(warm.softmax(dim=1), torch.rand(1, 3, 16, 16) * 255).backward()
    image = torch.rand(1, 3, height, width) * 255
    logits = torch.randn(1, k, height, width, requires_grad=True)
    loss = SoftNCut(radius=radius)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    value = loss(logits.softmax(dim=1), image)
    value.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pixels = height * width
    return {"size": [height, width], "k": k, "radius": radius, "offsets": len(loss.offsets),
            "seconds_forward_backward": round(seconds, 3), "peak_rss_above_baseline_mb": round((peak - base) / 1024, 1),
            "dense_matrix_gb": round(pixels * pixels * 4 / 1e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="96x128,224x288,448x576,896x1152")
    parser.add_argument("--k", type=int, default=11)
    parser.add_argument("--radius", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process's size
    args = parser.parse_args()
    if args.one:
        height, width = (int(s) for s in args.one.split("x"))
        print(json.dumps(measure(height, width, args.k, args.radius)))
        return
    rows = []
    for size in args.sizes.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", size, "--k", str(args.k), "--radius", str(args.radius)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
