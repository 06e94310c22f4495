"""Failed jobs of a multirun, every one named: in its own log and ``failed.json``, and in one list at the end.

Hydra runs every job of ``-m`` and then raises the first failure only; this callback (``conf/hydra/
default.yaml``) writes each failed job's error line into the job's log file and ``failed.json`` (which
``python -m datus.report`` shows as a failed row) and records it, so that :func:`datus.cli.run_command`
lists every failed job with its error when the multirun ends.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from datus.cli.errors import FAILED_JOBS, MULTIRUN, error_line
from datus.io import write_json
from datus.runs import FAILED_RUN as FAILED


class ReportFailures(Callback):
    """Record every failed job of a run or multirun (its log, ``failed.json``, the list printed at the end)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        MULTIRUN.append(True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED:
            if job_return.hydra_cfg is not None:  # a rerun that succeeded: no stale failure left behind
                (Path(job_return.hydra_cfg.hydra.runtime.output_dir) / FAILED).unlink(missing_ok=True)
            return
        line = error_line(job_return._return_value)
        runtime = job_return.hydra_cfg.hydra.runtime if job_return.hydra_cfg else None
        folder = Path(runtime.output_dir) if runtime is not None else Path(job_return.working_dir or ".")
        FAILED_JOBS.append((folder.name, line))  # the job's folder: its number and its overrides
        task = job_return.hydra_cfg.hydra.job.name if job_return.hydra_cfg else "job"
        try:
            with open(folder / f"{task}.log", "a") as log_file:  # the job's own log, which would stay empty
                log_file.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}][datus][ERROR] - {line}\n")
            write_json(folder / FAILED, {"error": line, "overrides": list(job_return.overrides or [])})
        except OSError:
            pass  # the folder itself may be what failed; the list at the end still names the job
