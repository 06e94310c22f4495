"""The SLURM templates run as written: a fake sbatch/srun executes them here, array tasks in turn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import PROJECT_ROOT
from tests.test_sweeps import mixed_root  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow

FAKE_SBATCH = textwrap.dedent(f"""\
    #!{sys.executable}
    # sbatch stand-in: runs the script now (every --array index in turn), prints a job id.
    import os, subprocess, sys
    args, array, extra = sys.argv[1:], None, []
    while args and args[0].startswith("--"):
        opt = args.pop(0)
        if opt.startswith("--array="):
            lo, hi = opt.split("=")[1].split("-")
            array = range(int(lo), int(hi) + 1)
        with open(os.environ["SBATCH_LOG"], "a") as log:
            log.write(opt + "\\n")
    script, *overrides = args
    for task in (array or [None]):
        env = dict(os.environ)
        if task is not None:
            env.update(SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_COUNT=str(len(array)))
        subprocess.run(["bash", script, *overrides], env=env, check=True, stdout=sys.stderr)
    print("4242")
""")


def test_sharded_discovery_templates_end_to_end(tmp_path, mixed_root):  # noqa: F811
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nexec "$@"\n')
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_LOG": str(tmp_path / "sbatch.log"),
           "N": "2", "DATA": str(mixed_root / "camvid"), "OUT": str(out), "CACHE": str(cache), "TRAINER": "cpu",
           "SLURM_CPUS_PER_TASK": "0"}
    overrides = ["dataset=camvid", "dataset.split=val", "backbone=tiny_vit", "resize.size=64", "k=3",
                 "logger=csv", "trainer.enable_progress_bar=false", "num_pictures=0"]
    proc = subprocess.run(["bash", "slurm/submit_sharded.sh", *overrides], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "--dependency=afterok:4242" in (tmp_path / "sbatch.log").read_text()
    for task in (0, 1):  # each task decomposed its own block of the 3 images
        summary = json.loads((out / "shards" / str(task) / "summary.json").read_text())
        assert summary["computed_this_run"] in (1, 2)
    labels = json.loads((out / "labels" / "summary.json").read_text())
    assert labels["labeling"]["images"] == 3 and "miou" in labels["metrics"]
    assert len(list((out / "labels" / "pseudo_masks").glob("*.png"))) == 3


def test_submitit_slurm_launcher_config(tmp_path):
    """hydra/launcher=slurm_gpu: one SLURM job per multirun job, submitit requeues, Lightning does not."""
    from tests.conftest import compose_config

    cfg = compose_config("discover", ["hydra/launcher=slurm_gpu", "trainer=slurm"], tmp_path)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == cfg.trainer.devices  # Lightning's rule
    assert launcher.max_num_timeout > 0 and launcher.mem_gb and launcher.timeout_min and launcher.cpus_per_task
    assert cfg.trainer.plugins[0].auto_requeue is False  # only one of them handles requeue
