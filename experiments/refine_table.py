"""The refinement table of the README: each head (with and without the CRF) on CamVid val and train.

Runs the README's commands as subprocesses and collects their numbers:

    python experiments/refine_table.py --root $C --val-masks OUT_VAL/pseudo_masks \
        --train-masks OUT_TRAIN/pseudo_masks --out experiments/bench/refine_camvid.json

For each (split, model): ``train.py`` on that split's pseudo masks (val: transductive, trained on
val's own pseudo masks and scored on val's ground truth, with no validation, so no checkpoint is
chosen by the ground truth it is scored on: the last one is used; train: trained on train's pseudo
masks, the best checkpoint by val's ground truth, scored on train's ground truth) with ``predict=true`` (refined masks through the
default ``postprocess=crf``), then ``evaluate.py ckpt=<best> postprocess=none`` on the same split
for the number without the CRF. The first run of each split starts from an empty feature cache,
so its minutes include the backbone pass; peak RSS is the child process's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(command: list[str]) -> tuple[float, float]:
    """Wall minutes and peak RSS (GB) of ``command``'s process."""
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, command)
    return (time.monotonic() - start) / 60, usage.ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="CamVid root")
    parser.add_argument("--val-masks", type=Path, required=True)
    parser.add_argument("--train-masks", type=Path, required=True)
    parser.add_argument("--models", default="linear_head,deeplabv3_head,segmenter,align_block")
    parser.add_argument("--splits", default="val,train")
    parser.add_argument("--rounds", default="1", help="comma-separated rounds values for the first model")
    parser.add_argument("--epochs", type=int, default=20, help="trainer.max_epochs (train.yaml's default: 20)")
    parser.add_argument("--work", type=Path, default=Path("out/refine_table"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    done = {(r["split"], r["model"], r["rounds"], r.get("epochs", 10)) for r in rows}
    models = args.models.split(",")
    jobs = []  # per split: the first model at every rounds value, then the other models
    splits = args.splits.split(",")
    jobs += [(split, models[0], int(r)) for split in splits for r in args.rounds.split(",")]
    jobs += [(split, model, 1) for split in splits for model in models[1:]]
    for split, model, rounds in jobs:
        if (split, model, rounds, args.epochs) in done:
            continue
        masks = args.val_masks if split == "val" else args.train_masks
        run_dir = args.work / f"{split}_{model}_r{rounds}_e{args.epochs}"
        common = ["dataset=camvid", f"dataset.root={args.root}", "logger=csv", f"cache_dir={args.work / 'cache'}"]
        validation = "val_split=null" if split == "val" else "val_split=val"
        minutes, peak = run([sys.executable, "train.py", *common, f"train_split={split}", validation,
                             f"pseudo_masks={masks}", f"model={model}", f"rounds={rounds}", "predict=true",
                             f"trainer.max_epochs={args.epochs}", f"hydra.run.dir={run_dir}"])
        summary = json.loads((run_dir / "train_summary.json").read_text())
        last = summary["rounds"][-1]
        eval_dir = run_dir / "eval_without_crf"
        run([sys.executable, "evaluate.py", *common, f"dataset.split={split}", f"ckpt={last['best_checkpoint']}",
             "postprocess=none", f"hydra.run.dir={eval_dir}"])
        plain = json.loads((eval_dir / "metrics.json").read_text())
        before = json.loads((masks.parent / "metrics.json").read_text())
        rows.append({
            "split": split, "model": model, "rounds": rounds, "epochs": args.epochs, "transductive": split == "val",
            "pseudo_masks_miou": before["miou"], "pseudo_masks_pixel_accuracy": before["pixel_accuracy"],
            "refined_miou": plain["miou"], "refined_pixel_accuracy": plain["pixel_accuracy"],
            "refined_crf_miou": last["refined_train_miou"], "refined_crf_pixel_accuracy": last["refined_train_pixel_accuracy"],
            "minutes": round(minutes, 2), "peak_rss_gb": round(peak, 2),
        })
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
        print(json.dumps(rows[-1]), flush=True)
    print("| split | model | rounds | epochs | pseudo masks | refined | refined + CRF | minutes | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
        print(f"| {r['split']}{' (transductive)' if r['transductive'] else ''} | {r['model']} | {r['rounds']} | {r.get('epochs', 10)} | "
              f"{pct(r['pseudo_masks_miou'])} / {pct(r['pseudo_masks_pixel_accuracy'])} | "
              f"{pct(r['refined_miou'])} / {pct(r['refined_pixel_accuracy'])} | "
              f"{pct(r['refined_crf_miou'])} / {pct(r['refined_crf_pixel_accuracy'])} | {r['minutes']} | {r['peak_rss_gb']} GB |")


if __name__ == "__main__":
    main()
