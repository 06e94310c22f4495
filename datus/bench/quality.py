"""``python -m datus.bench quality``: named configurations x datasets x k-means seeds, one table.

A quality decision rests on several datasets and several seeds: one k-means seed moves mIoU by
points. A *study* (``conf/quality/<name>.yaml``, or any YAML file of that shape) names

- ``datasets``: name -> the overrides that select it (``dataset=camvid dataset.split=val k=11``), and
  optionally ``fit_on``: the dataset whose runs fit the centroids of its inductive rows;
- ``configurations``: name -> one of
  ``{overrides: [...]}`` (a ``discover.py`` run),
  ``{inductive: <configuration>, overrides: [...]}`` (``discover.py`` labelling the dataset with the
  centroids that configuration fitted on the dataset's ``fit_on``, seed by seed) or
  ``{refine: <configuration>, overrides: [...]}`` (``train.py`` on that configuration's pseudo masks
  of the same dataset and seed, transductive: trained and scored on the split itself) or
  ``{evaluate: <refine configuration>, overrides: [...]}`` (``evaluate.py`` scoring the network that
  refine configuration trained on the same dataset and seed under other settings, ``postprocess=none``
  for the CRF's share: nothing is trained again);
- ``baseline`` (a configuration every other one is compared with, seed by seed) and ``seeds``; a
  configuration may name its own ``seeds`` (fewer, for an expensive row: the table says how many) and
  ``versus: <configuration>``, the one row it differs from by one thing (the CRF, a training step), whose
  paired difference gets its own table: that thing's share, seed by seed; rows and datasets may name a
  ``label`` (words): ``quality.md`` then has a summary by labels (mean ± std, seeds, the ``versus``
  difference, the best of each column in bold), ready for a README.

Every (configuration, dataset) is one Hydra multirun of the README's command over the seeds not
finished yet (``labeling.kmeans.seed``; ``train.py``'s ``seed``), into
``<out>/runs/<dataset>/<configuration>/seed<s>/``: the backbone passes come from the settings-keyed
cache, so a seed re-runs only the labelling. A killed study resumes where it stopped; a
configuration whose overrides changed is rerun; the folder may be moved or copied (its records name
paths relative to ``<out>``). The result is ``quality.json`` (every run, by its folder under ``<out>``, and the
aggregates), ``quality.md`` (mean ± std per dataset, the paired difference to the baseline, the IoU of each
class, and each row's wall minutes: the first seed, cold when the cache was, and the slowest later one) and
``quality.png`` (bars with the seed spread).

``quality.json`` is also the study's portable record: ``--merge <quality.json>`` counts the runs an earlier
call recorded (on another machine, in a cluster job's shard, in a scratch folder since cleared) as
finished where ``--out`` has none, for the rows and datasets the study still defines the same way; a
row reading a run's files (pseudo masks, network, centroids) that only a record has runs it again.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from datus.io import atomic_write, load_json, save_figure, write_json

log = logging.getLogger(__name__)

#: Where the entry points and the study files live (the package is installed from a clone).
REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "conf" / "quality"
#: Settings every run of a study gets: quiet, no logger (the table is the report).
QUIET = ("logger=none", "trainer.enable_progress_bar=false", "num_pictures=0")


class StudyError(ValueError):
    """A study file that cannot run (message names the entry)."""


@dataclass
class Dataset:
    name: str
    overrides: list[str]
    fit_on: str | None = None
    #: its name in the summary table's header (None: ``name``)
    label: str | None = None

    @property
    def split(self) -> str | None:
        """The ``dataset.split=`` this dataset names (what ``train.py`` trains and scores on)."""
        for override in self.overrides:
            if override.startswith("dataset.split="):
                return override.split("=", 1)[1]
        return None


@dataclass
class Configuration:
    name: str
    overrides: list[str] = field(default_factory=list)
    #: ``discover`` | ``inductive`` | ``refine`` | ``evaluate``
    kind: str = "discover"
    #: the configuration whose centroids (inductive), pseudo masks (refine) or trained network (evaluate) it reads
    source: str | None = None
    #: its own seeds (None: the study's)
    seeds: list[int] | None = None
    #: the configuration it is compared with seed by seed besides the baseline (the same row without the CRF, ...)
    versus: str | None = None
    #: what the row is, in words, for the summary table (README-ready); None: its name
    label: str | None = None

    @property
    def seed_setting(self) -> str:
        return "seed" if self.kind in ("refine", "evaluate") else "labeling.kmeans.seed"


@dataclass
class Study:
    datasets: dict[str, Dataset]
    configurations: dict[str, Configuration]
    baseline: str | None
    seeds: list[int]

    def order(self) -> list[Configuration]:
        """Configurations with every source before what reads it."""
        done: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in done:
                return
            if name in path:
                raise StudyError(f"configurations {' -> '.join((*path, name))} read each other in a circle")
            source = self.configurations[name].source
            if source is not None:
                visit(source, (*path, name))
            done.append(name)

        for name in self.configurations:
            visit(name, ())
        return [self.configurations[name] for name in done]


def _seed_list(value: Any, where: str) -> list[int]:
    """``value`` as k-means seeds: a non-empty list of distinct whole numbers >= 0 (a seed named twice
    would run twice into one folder)."""
    ok = isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                   for v in value)
    if not ok:
        raise StudyError(f"{where} must be a non-empty list of whole numbers >= 0, got {value!r}")
    twice = sorted({v for v in value if value.count(v) > 1})
    if twice:
        raise StudyError(f"{where} names seed {', '.join(map(str, twice))} more than once: {value!r}")
    return [int(v) for v in value]


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise StudyError(f"{where}: a list of overrides (strings), got {value!r}")
    return [str(v) for v in value]


def _label(node: dict[str, Any], where: str) -> str | None:
    label = node.get("label")
    if label is not None and not (isinstance(label, str) and label.strip()):
        raise StudyError(f"{where}.label must be words (a string), got {label!r}")
    return label


def check_overrides(overrides: list[str], where: str) -> None:
    """Refuse, before any run starts, what Hydra cannot parse as one override, or a sweep (a study
    sweeps only the seeds: a value per row)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parsed = parser.parse_override(override)
        except Exception as err:  # noqa: BLE001 - hydra raises its own exception types for any parse error
            hint = ("; --configs, --datasets and --seeds take comma-separated lists (--configs a,b), "
                    "so a second name after a space is read as an override" if "=" not in override else "")
            raise StudyError(f"{where}: {override!r} is not a Hydra override ({' '.join(str(err).split())}; "
                             f"write key=value){hint}") from None
        if parsed.is_sweep_override():
            raise StudyError(f"{where}: {override!r} sweeps several values; a study sweeps only the k-means "
                             "seeds: make a configuration per value")


def load_study(study: str | Path, *, seeds: list[int] | None = None, configurations: list[str] | None = None,
               datasets: list[str] | None = None) -> Study:
    """The study named ``study`` (``conf/quality/<study>.yaml``) or in the file ``study``, narrowed to the
    given ``seeds``, ``configurations`` (sources are kept) and ``datasets``."""
    path = Path(study)
    if not path.suffix:
        path = STUDIES / f"{study}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in STUDIES.glob("*.yaml")))
        raise StudyError(f"--study {study}: no such study file (known: {known}; or a path to a YAML file)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise StudyError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from err
    if not isinstance(raw.get("datasets"), dict) or not isinstance(raw.get("configurations"), dict):
        raise StudyError(f"{path}: a study names `datasets` and `configurations` (mappings)")
    found = {}
    for name, node in raw["datasets"].items():
        node = node if isinstance(node, dict) else {"overrides": node}
        found[name] = Dataset(name, _strings(node.get("overrides"), f"{path}: datasets.{name}"), node.get("fit_on"),
                              _label(node, f"{path}: datasets.{name}"))
        check_overrides(found[name].overrides, f"{path}: datasets.{name}")
    configs = {}
    for name, node in raw["configurations"].items():
        node = node if isinstance(node, dict) else {"overrides": node}
        kinds = [kind for kind in ("inductive", "refine", "evaluate") if node.get(kind)]
        if len(kinds) > 1:
            raise StudyError(f"{path}: configurations.{name} is one of inductive, refine or evaluate, not "
                             f"{' and '.join(kinds)}")
        kind = kinds[0] if kinds else "discover"
        own = node.get("seeds")
        if own is not None:
            own = _seed_list(own, f"{path}: configurations.{name}.seeds")
        label = _label(node, f"{path}: configurations.{name}")
        configs[name] = Configuration(name, _strings(node.get("overrides"), f"{path}: configurations.{name}"), kind,
                                      node.get(kind) if kinds else None, own, node.get("versus"), label)
        check_overrides(configs[name].overrides, f"{path}: configurations.{name}")
    study_seeds = _seed_list(raw["seeds"], f"{path}: seeds") if raw.get("seeds") is not None else [0]
    result = Study(found, configs, raw.get("baseline"),
                   study_seeds if seeds is None else _seed_list(seeds, "--seeds"))
    for config in configs.values():  # a row's own seeds, within the study's (--seeds narrows both)
        if config.seeds is not None:
            config.seeds = [s for s in config.seeds if s in result.seeds]
    for config in configs.values():
        if config.source is not None and config.source not in configs:
            raise StudyError(f"{path}: configurations.{config.name} reads configuration {config.source!r}, "
                             f"which the study does not name ({', '.join(configs)})")
    for config in configs.values():
        if config.versus is not None and (config.versus not in configs or config.versus == config.name):
            raise StudyError(f"{path}: configurations.{config.name}.versus={config.versus!r} names no other "
                             f"configuration of the study ({', '.join(n for n in configs if n != config.name)})")
        if config.kind == "evaluate":
            source = configs[config.source]
            if source.kind != "refine":
                raise StudyError(f"{path}: configurations.{config.name} evaluates the network {config.source!r} "
                                 "trained, but that configuration trains none: name a `refine:` configuration")
            if any(o.split("=", 1)[0].lstrip("+~") == "rounds" for o in source.overrides):
                raise StudyError(f"{path}: configurations.{config.name} evaluates {config.source!r}, which trains "
                                 "several rounds: its last checkpoint is per round (give it one round)")
    for dataset in found.values():
        if dataset.fit_on is not None and dataset.fit_on not in found:
            raise StudyError(f"{path}: datasets.{dataset.name}.fit_on={dataset.fit_on!r} is not a dataset of the study")
    if result.baseline is not None and result.baseline not in configs:
        raise StudyError(f"{path}: baseline={result.baseline!r} is not a configuration ({', '.join(configs)})")
    if configurations:
        unknown = [c for c in configurations if c not in configs]
        if unknown:
            raise StudyError(f"--configs {','.join(unknown)}: not in the study ({', '.join(configs)})")
        keep = set(configurations)
        while True:  # what they read stays
            more = {configs[c].source for c in keep if configs[c].source} - keep
            if not more:
                break
            keep |= more
        result.configurations = {n: c for n, c in configs.items() if n in keep}
        if result.baseline not in keep:
            result.baseline = None
    if datasets:
        unknown = [d for d in datasets if d not in found]
        if unknown:
            raise StudyError(f"--datasets {','.join(unknown)}: not in the study ({', '.join(found)})")
        keep = set(datasets) | {found[d].fit_on for d in datasets if found[d].fit_on}
        result.datasets = {n: d for n, d in found.items() if n in keep}
    return result


# ----------------------------------------------------------------------------------------- running
@dataclass
class Cell:
    """One configuration on one dataset: a multirun over its seeds."""

    config: Configuration
    dataset: Dataset
    folder: Path
    command: list[str]
    #: the study's ``--out``: the recorded command and ``quality.json`` name paths relative to it
    out: Path
    #: seed -> its run as an earlier ``quality.json`` recorded it (``--merge``), used where ``out`` has none
    recorded: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: per-class IoU an old record kept per row only: (the seeds it averages, class -> mean and n)
    recorded_classes: tuple[list[int], dict[str, Any]] | None = None

    def seeds(self, study: Study) -> list[int]:
        return study.seeds if self.config.seeds is None else self.config.seeds

    def run_dir(self, seed: int) -> Path:
        return self.folder / f"seed{seed}"

    def current(self) -> bool:
        """Whether the runs in ``folder`` were made by this cell's command (or no command is recorded),
        the machine's folders aside (``--data``, caches: :func:`_portable`). The record names ``--out`` as
        ``<out>``, so a study folder moved or copied elsewhere stays current; a record written before that
        (absolute paths) still counts where it was made."""
        record = self.folder / "command.json"
        if not record.is_file():
            return True
        recorded = load_json(record)
        return _portable(recorded) == _portable(_recorded(self)) or recorded == self.command[1:]

    def result_file(self, seed: int) -> Path:
        run = self.run_dir(seed)
        return run / "train_summary.json" if self.config.kind == "refine" else run / "metrics.json"

    def scores(self, seed: int) -> dict[str, Any] | None:
        """A finished seed's mIoU and pixel accuracy (fractions) and its IoU per ground-truth class (None
        where its run did not record them: a refinement from before they were kept), read in one go: the
        run in ``out`` if this cell's command made it, else the run a merged record holds (``record``
        names its file); None if the seed has not finished."""
        own = self.own_scores(seed) if self.current() else None
        return own if own is not None else self.recorded.get(seed)

    def own_scores(self, seed: int) -> dict[str, Any] | None:
        """:meth:`scores` of the run in ``out`` only (whatever command made it): what a row reading this
        one's files (pseudo masks, checkpoint, centroids) can read."""
        path = self.result_file(seed)
        if not path.is_file():
            return None
        read = self.reads(seed)
        if read is not None and read.is_file() and read.stat().st_mtime_ns > path.stat().st_mtime_ns:
            return None  # what it read (network, pseudo masks, centroids) was made again since: not of it
        data = load_json(path)
        if self.config.kind == "refine":
            last = (data.get("rounds") or [{}])[-1]
            if last.get("refined_train_miou") is None:
                return None
            return {"miou": last["refined_train_miou"], "pixel_accuracy": last["refined_train_pixel_accuracy"],
                    "per_class_iou": last.get("refined_train_per_class_iou")}
        return {"miou": data["miou"], "pixel_accuracy": data["pixel_accuracy"], "per_class_iou": data.get("per_class_iou")}

    @property
    def source_dataset(self) -> str:
        """The dataset whose run of the source row this row reads: its ``fit_on`` (inductive), else its own."""
        return str(self.dataset.fit_on) if self.config.kind == "inductive" else self.dataset.name

    def reads(self, seed: int) -> Path | None:
        """The file of its source row's run this row's run reads, or stands for it: the network (evaluate),
        the pseudo masks' scores, written after them (refine), the centroids (inductive); None for a row
        reading no other row."""
        source = self.out / "runs" / str(self.source_dataset) / str(self.config.source) / f"seed{seed}"
        return {"evaluate": _checkpoint(self.out, self.dataset, self.config, seed),
                "refine": source / "metrics.json",
                "inductive": source / "labeling" / "centroids.npz"}.get(self.config.kind)

    def result(self, seed: int) -> dict[str, float] | None:
        """mIoU and pixel accuracy (fractions) of a finished seed, None if it has not finished."""
        scores = self.scores(seed)
        return None if scores is None else {"miou": scores["miou"], "pixel_accuracy": scores["pixel_accuracy"]}


def plan(study: Study, out: Path, extra: list[str]) -> list[Cell]:
    """Every (configuration, dataset) cell, sources first; an inductive configuration runs on the
    datasets that name a ``fit_on``."""
    cells = []
    for config in study.order():
        for dataset in study.datasets.values():
            if config.kind == "inductive" and dataset.fit_on is None:
                continue
            folder = out / "runs" / dataset.name / config.name
            cells.append(Cell(config, dataset, folder, _command(study, config, dataset, out, extra), out))
    return cells


def _command(study: Study, config: Configuration, dataset: Dataset, out: Path, extra: list[str]) -> list[str]:
    folder = out / "runs" / dataset.name / config.name
    seed = "${" + config.seed_setting + "}"
    sweep = [f"hydra.sweep.dir={folder}", f"hydra.sweep.subdir=seed{seed}"]
    if config.kind == "refine":
        split = dataset.split
        if split is None:
            raise StudyError(f"configurations.{config.name} refines on datasets.{dataset.name}, which names no "
                             "dataset.split= (train.py trains and scores on it)")
        source = out / "runs" / dataset.name / config.source / f"seed{seed}" / "pseudo_masks"
        data = [o for o in dataset.overrides if not o.startswith("dataset.split=")]
        return [sys.executable, "train.py", "-m", *_settable("train", [*data, *extra]), f"train_split={split}",
                f"val_split={split}", "predict=true", f"pseudo_masks={source}", "logger=none",
                "trainer.enable_progress_bar=false", *sweep, *config.overrides]
    if config.kind == "evaluate":
        checkpoint = _checkpoint(out, dataset, config, seed)
        return [sys.executable, "evaluate.py", "-m", *_settable("evaluate", [*dataset.overrides, *extra]),
                f"ckpt={checkpoint}", "logger=none", "num_samples=0", *sweep, *config.overrides]
    overrides = list(config.overrides)
    if config.kind == "inductive":  # the source's settings, labelled with its centroids of the fit_on split
        fitted = out / "runs" / dataset.fit_on / config.source / f"seed{seed}" / "labeling" / "centroids.npz"
        overrides = [*study.configurations[config.source].overrides, f"labeling.centroids={fitted}", *overrides]
    return [sys.executable, "discover.py", "-m", *dataset.overrides, *QUIET, *sweep, *overrides, *extra]


def _checkpoint(out: Path, dataset: Dataset, config: Configuration, seed: int | str) -> Path:
    """The network an evaluate row scores: its source row's on the same dataset and seed (trained in one
    round, so its last epoch, which made that row's refined masks)."""
    return out / "runs" / dataset.name / str(config.source) / f"seed{seed}" / "checkpoints" / "last.ckpt"


def _settable(config_name: str, overrides: list[str]) -> list[str]:
    """The ``overrides`` (the study's, meant for every run) that ``conf/<config_name>.yaml`` has a setting for:
    ``train.py`` has no ``graph`` or ``labeling``, so a study's discovery settings are left out of its runs."""
    from omegaconf import OmegaConf

    from datus.cli.compose import compose_config

    known = compose_config(config_name, [])
    kept = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        group = key.split(".", 1)[0]
        if OmegaConf.select(known, key, default=None) is not None or group in known or "/" in key:
            kept.append(override)
    return kept


def preflight(cells: list[Cell]) -> None:
    """Compose every cell's command and check its dataset's folder, before any run starts: a typo in the
    last row or a wrong ``--data`` fails now, naming the row, not after hours of the rows before it."""
    from omegaconf import OmegaConf

    from datus.cli.compose import compose_config

    checked: set[str] = set()
    for cell in cells:
        script, overrides = Path(cell.command[1]).stem, [o for o in cell.command[3:] if not o.startswith("hydra.")]
        try:
            cfg = compose_config(script, overrides)
        except Exception as err:  # noqa: BLE001 - Hydra's and OmegaConf's errors name the override
            raise StudyError(f"configurations.{cell.config.name} on datasets.{cell.dataset.name}: "
                             f"{' '.join(str(err).split())}") from None
        root = OmegaConf.select(cfg, "dataset.root", default=None)
        if root is None or cell.dataset.name in checked:
            continue
        checked.add(cell.dataset.name)
        folder = Path(str(root)).expanduser()
        folder = folder if folder.is_absolute() else REPO / folder  # the runs start in the repository
        if not folder.is_dir():
            raise StudyError(f"datasets.{cell.dataset.name}: dataset.root={root} is not a folder; pass --data DIR "
                             "(the folder holding the study's datasets, e.g. camvid/ and suim/) or paths.data_dir=DIR")


def _pending(cell: Cell, seeds: list[int]) -> list[int]:
    """Seeds of ``cell`` without a result (in ``out`` or a merged record), or all of them when its command
    changed since they ran in ``out`` (the rerun replaces that folder's runs: a seed left to a record
    would keep an old run there)."""
    if not cell.current():
        return list(seeds)
    return [s for s in seeds if cell.result(s) is None]


def _work(study: Study, cells: list[Cell]) -> list[tuple[Cell, list[int]]]:
    """Each cell with the seeds it must run: its pending ones; those a row reading its files needs where
    only a record has them (a record holds scores, not pseudo masks, networks or centroids); and the
    runs in ``out`` that read a source run made again."""
    pending = {id(cell): _pending(cell, cell.seeds(study)) for cell in cells}
    by_name = {(c.config.name, c.dataset.name): c for c in cells}

    def source(cell: Cell) -> Cell | None:
        return by_name.get((cell.config.source, cell.source_dataset)) if cell.config.source else None

    for cell in reversed(cells):  # readers come after what they read: a need reaches a source's source
        if (read := source(cell)) is not None:
            need = [s for s in pending[id(cell)] if read.own_scores(s) is None]
            pending[id(read)] = sorted({*pending[id(read)], *need})
    for cell in cells:
        if (read := source(cell)) is not None:
            again = [s for s in pending[id(read)] if s in cell.seeds(study) and cell.own_scores(s) is not None]
            pending[id(cell)] = sorted({*pending[id(cell)], *again})
    return [(cell, pending[id(cell)]) for cell in cells]


#: how a recorded command names the study's ``--out``
OUT = "<out>"


def _recorded(cell: Cell) -> list[str]:
    """The command as recorded: without the interpreter's path (which may differ between machines), and
    with ``--out`` as :data:`OUT` in every ``key=path`` under it (so moving the study changes nothing)."""
    out = str(cell.out)

    def relative(arg: str) -> str:
        key, sep, value = arg.partition("=")
        if sep and (value == out or value.startswith(out + os.sep)):
            return f"{key}={OUT}{value[len(out):]}"
        return arg

    return [relative(arg) for arg in cell.command[1:]]


def run_cell(cell: Cell, seeds: list[int], progress=None, task=None) -> str | None:
    """Run ``cell``'s multirun over ``seeds`` (its log in ``<folder>/multirun.log``); None, or the error."""
    cell.folder.mkdir(parents=True, exist_ok=True)
    changed = not cell.current()
    command = [*cell.command, f"{cell.config.seed_setting}={','.join(str(s) for s in seeds)}"]
    if changed:  # the old runs are replaced; until every seed has run again they are not this command's
        command.append("overwrite=true")
    else:
        write_json(cell.folder / "command.json", _recorded(cell))
    log_path = cell.folder / "multirun.log"
    with open(log_path, "ab") as stream:
        stream.write(f"\n$ {shlex.join(command)}\n".encode())
        stream.flush()
        proc = subprocess.Popen(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT,
                                env={**os.environ, "HYDRA_FULL_ERROR": os.environ.get("HYDRA_FULL_ERROR", "0")})
        clock = _Clock(cell.folder / "seconds.json", time.monotonic(), since=time.time())
        seen: set[int] = set()
        while proc.poll() is None:
            time.sleep(1.0)
            seen = _advance(cell, seeds, seen, progress, task, clock)
        _advance(cell, seeds, seen, progress, task, clock)
    if proc.returncode == 0:
        write_json(cell.folder / "command.json", _recorded(cell))
        return None
    return _error_line(log_path) or f"exit status {proc.returncode}"


class _Clock:
    """Wall seconds of each seed a multirun finishes, kept in ``<cell>/seconds.json``: from the previous
    seed's end, the first seed from the command's start (so it holds the start-up and any backbone pass
    the cache did not have: ``first``). Seeds seen finished in the same poll share the interval."""

    def __init__(self, path: Path, start: float, *, since: float) -> None:
        self.path, self.mark, self.first, self.since = path, start, True, since

    def new(self, cell: Cell, seed: int) -> bool:
        """Whether ``seed`` finished in this call: a result written since it started (a rerun replaces
        old results, which must not count as finished, nor be timed)."""
        path = cell.result_file(seed)
        return path.is_file() and path.stat().st_mtime >= self.since and cell.own_scores(seed) is not None

    def finished(self, seeds: set[int]) -> None:
        now = time.monotonic()
        record = load_json(self.path) if self.path.is_file() else {}
        share = (now - self.mark) / len(seeds)
        for seed in sorted(seeds):
            record[str(seed)] = {"seconds": round(share, 1), "first": self.first}
            self.first = False
        write_json(self.path, record)
        self.mark = now


def _advance(cell: Cell, seeds: list[int], seen: set[int], progress, task, clock: _Clock) -> set[int]:
    finished = {s for s in seeds if s not in seen and clock.new(cell, s)}
    if finished:
        clock.finished(finished)
        if progress is not None:
            progress.advance(task, len(finished))
    return seen | finished


def _error_line(log_path: Path) -> str | None:
    """The last ``error:`` line (or the last line) of a failed multirun's log."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("error:") or ": error: " in line]  # datus' own, per job
    errors = ours or [line for line in lines if "Error" in line]
    return (errors or lines or [None])[-1]


# ------------------------------------------------------------------------------------------ records
@dataclass
class Records:
    """Runs earlier calls recorded in their ``quality.json`` (another machine, a cluster job's shard, a
    scratch folder since cleared), by (configuration, dataset) and seed, and what was left out and why."""

    runs: dict[tuple[str, str], dict[int, dict[str, Any]]] = field(default_factory=dict)
    #: (configuration, dataset) -> (seeds, class -> mean % and n): per-class IoU an old record kept per row only
    classes: dict[tuple[str, str], tuple[list[int], dict[str, Any]]] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    def attach(self, cells: list[Cell]) -> None:
        for cell in cells:
            key = (cell.config.name, cell.dataset.name)
            cell.recorded = dict(self.runs.get(key, {}))
            cell.recorded_classes = self.classes.get(key)


def _portable(overrides: list[str]) -> list[str]:
    """Overrides for every run that can change a result: without the machine's folders (``paths.*``,
    ``--data``, ``dataset.root``, caches, ``hydra.*``)."""
    def machine(key: str) -> bool:
        return key.split(".")[0] in ("paths", "hydra") or key.endswith(("root", "_dir"))

    return [o for o in overrides if not machine(o.lstrip("+~").split("=", 1)[0])]


def load_records(paths: list[Path], study: Study, extra: list[str]) -> Records:
    """The runs ``paths`` (``quality.json`` files this command wrote) recorded for rows and datasets the
    study still defines the same way: a row whose kind, source or overrides differ, a dataset whose
    overrides differ, or a file whose overrides for every run differ, is left out (said in ``left_out``).
    The first file that records a run wins. Records written before the datasets' and every run's overrides
    were kept are taken as matching; their per-class IoU (kept per row) and which seeds ran first (the one
    as slow as the row's first-seed minutes, and any slower than its slowest later seed) are recovered
    from their tables."""
    records = Records()
    for path in paths:
        try:
            data = load_json(path)
        except (OSError, ValueError) as err:
            raise StudyError(f"--merge {path}: not a readable quality.json ({' '.join(str(err).split())})") from None
        if not isinstance(data, dict) or not isinstance(data.get("runs"), list) or \
                not isinstance(data.get("configurations"), dict):
            raise StudyError(f"--merge {path}: not a quality.json of this command (no `runs` and `configurations`)")
        kept = data.get("extra")
        if kept is not None and _portable(kept) != _portable(extra):
            records.left_out.append(f"{_shown(path)}: its runs had the overrides {_portable(kept)}, this call "
                                    f"{_portable(extra)}")
            continue
        rows = {}
        for name, config in study.configurations.items():
            old = data["configurations"].get(name)
            if old is None:
                continue
            now = {"kind": config.kind, "source": config.source, "overrides": config.overrides}
            then = {k: old.get(k) for k in now}
            if then != now:
                records.left_out.append(f"`{name}` in {_shown(path)}: recorded as {then}, now {now}")
                continue
            rows[name] = config
        datasets = set(study.datasets)
        for name, overrides in (data.get("dataset_overrides") or {}).items():
            if name in study.datasets and overrides != study.datasets[name].overrides:
                records.left_out.append(f"dataset `{name}` in {_shown(path)}: recorded as {overrides}, now "
                                        f"{study.datasets[name].overrides}")
                datasets.discard(name)
        mine: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
        for run in data["runs"]:
            key, seed = (run.get("configuration"), run.get("dataset")), run.get("seed")
            if key[0] in rows and key[1] in datasets and seed not in records.runs.get(key, {}):
                mine.setdefault(key, {})[seed] = run
        for key, runs in mine.items():
            entry = data.get("table", {}).get(key[0], {}).get(key[1], {})
            for seed, run in runs.items():
                first, minutes = run.get("first"), entry.get("minutes")
                if first is None and run.get("seconds") is not None and minutes:
                    later, took = minutes.get("later_max"), run["seconds"] / 60
                    first = later is None or took > later + 1e-6 or abs(took - (minutes.get("first") or -1)) < 1e-6
                records.runs.setdefault(key, {})[seed] = {
                    "miou": run["miou"], "pixel_accuracy": run["pixel_accuracy"],
                    "per_class_iou": run.get("per_class_iou"), "seconds": run.get("seconds"),
                    "first": bool(first), "record": _shown(path)}
            without = sorted(s for s, run in runs.items() if not run.get("per_class_iou"))
            if without and entry.get("per_class_iou") and key not in records.classes:
                kept = _class_remainder(entry["per_class_iou"], [r["per_class_iou"] for r in runs.values()
                                                                 if r.get("per_class_iou")])
                if kept:
                    records.classes[key] = (without, kept)
        taken = sum(len(runs) for runs in mine.values())
        records.files.append({"file": _shown(path), "commit": data.get("commit"), "runs": taken})
    return records


def _class_remainder(means: dict[str, dict[str, float]], runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """A row's per-class means (in %, with their n) without the runs that kept their own (fractions): the
    mean of the runs that kept none, which an earlier record held as a row mean only."""
    rest = {}
    for name, kept in means.items():
        values = [100 * float(r[name]) for r in runs if r.get(name) is not None]
        count = int(kept["n"]) - len(values)
        if count > 0:
            rest[name] = {"mean": (float(kept["mean"]) * int(kept["n"]) - float(np.sum(values))) / count, "n": count}
    return rest


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (records are often committed there)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def code_version() -> str | None:
    """The repository's commit (``+changes`` when its code differs from it), None outside a clone: which
    code a record's runs came from."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    if commit is None:
        return None
    changed = git("status", "--porcelain", "--", "datus", "conf", "discover.py", "train.py", "evaluate.py")
    return f"{commit}+changes" if changed else commit


# -------------------------------------------------------------------------------------- aggregates
def _stats(values: list[float]) -> dict[str, Any]:
    array = 100 * np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max()), "n": len(array),
            "values": [round(float(v), 2) for v in array]}


def collect(study: Study, cells: list[Cell]) -> dict[str, Any]:
    """Every finished run, and per configuration and dataset: mIoU and pixel accuracy (mean ± std over
    seeds, in %) and the paired mIoU difference to the baseline (mean, min, max over the common seeds)."""
    runs, table = [], {}
    by_cell = {(c.config.name, c.dataset.name): c for c in cells}
    stale = []
    for cell in cells:
        if not cell.current():  # made by another command, and not yet all run again by this one
            stale.append(f"{cell.config.name}/{cell.dataset.name}")
        scored = {s: cell.scores(s) for s in cell.seeds(study)}
        scored = {s: r for s, r in scored.items() if r is not None}
        done = {s: {"miou": r["miou"], "pixel_accuracy": r["pixel_accuracy"]} for s, r in scored.items()}
        timed = load_json(cell.folder / "seconds.json") if (cell.folder / "seconds.json").is_file() else {}
        timed = {s: (scored[s] if "record" in scored[s] else timed.get(str(s))) for s in done}
        timed = {s: {"seconds": v["seconds"], "first": bool(v["first"])} for s, v in timed.items()
                 if v is not None and v.get("seconds") is not None}
        for seed, result in done.items():
            record = scored[seed].get("record")
            runs.append({"configuration": cell.config.name, "dataset": cell.dataset.name, "seed": seed,
                         "run": str(cell.run_dir(seed).relative_to(cell.out)), **result,
                         "per_class_iou": scored[seed].get("per_class_iou"),
                         "seconds": timed[seed]["seconds"] if seed in timed else None,
                         "first": timed[seed]["first"] if seed in timed else None,
                         **({"record": record} if record else {})})
        if not done:
            continue
        entry = {"kind": cell.config.kind, "seeds": sorted(done),
                 "miou": _stats([r["miou"] for r in done.values()]),
                 "pixel_accuracy": _stats([r["pixel_accuracy"] for r in done.values()])}
        if timed:
            first = [t["seconds"] / 60 for t in timed.values() if t["first"]]
            later = [t["seconds"] / 60 for t in timed.values() if not t["first"]]
            entry["minutes"] = {"first": max(first) if first else None, "later_max": max(later) if later else None,
                                "total": sum(t["seconds"] for t in timed.values()) / 60}
        aggregate = None
        if cell.recorded_classes is not None:  # an old record's per-row means: whole, or not at all
            without = {s for s, r in scored.items() if "record" in r and not r.get("per_class_iou")}
            if set(cell.recorded_classes[0]) <= without:
                aggregate = cell.recorded_classes[1]
        classes = _per_class_mean([r.get("per_class_iou") for r in scored.values()], aggregate)
        if classes:
            entry["per_class_iou"] = classes
        for key, other in (("vs_baseline", study.baseline if cell.config.name != study.baseline else None),
                           ("vs_versus", cell.config.versus)):
            paired = _paired(done, by_cell.get((other, cell.dataset.name)) if other else None)
            if paired:
                entry[key] = paired
        table.setdefault(cell.config.name, {})[cell.dataset.name] = entry
    return {"baseline": study.baseline, "seeds": study.seeds, "datasets": list(study.datasets),
            "configurations": {n: {"kind": c.kind, "source": c.source, "versus": c.versus, "overrides": c.overrides,
                                   "seeds": c.seeds if c.seeds is not None else study.seeds, "label": c.label}
                               for n, c in study.configurations.items()},
            "table": table, "runs": runs, "stale": stale}


def _paired(done: dict[int, dict[str, float]], other: Cell | None) -> dict[str, Any] | None:
    """mIoU differences in points to ``other``'s runs of the same seeds (mean, std, min, max, n; the
    seeds it has not finished left out), None without a common seed."""
    if other is None:
        return None
    paired = [(done[s]["miou"] - b["miou"]) for s in done if (b := other.result(s)) is not None]
    return {k: v for k, v in _stats(paired).items() if k != "values"} if paired else None


def _per_class_mean(seeds: list[dict[str, float | None] | None],
                    aggregate: dict[str, dict[str, float]] | None = None) -> dict[str, dict[str, float | int]]:
    """Per class: the mean IoU in % over the seeds that recorded it, and their count (a row's seeds all
    have them, or only the runs made since they were kept); ``aggregate`` (class -> mean in % and n) adds
    seeds an old record kept as a mean only."""
    recorded = [s for s in seeds if s]
    aggregate = aggregate or {}
    classes = list(dict.fromkeys([*(c for s in recorded for c in s), *aggregate]))
    mean = {}
    for name in classes:
        values = [100 * float(s[name]) for s in recorded if s.get(name) is not None]
        kept = aggregate.get(name) or {"mean": 0.0, "n": 0}
        count = len(values) + int(kept["n"])
        if count:
            mean[name] = {"mean": (float(np.sum(values)) + float(kept["mean"]) * int(kept["n"])) / count, "n": count}
    return mean


def _class_tables(result: dict[str, Any]) -> list[str]:
    """Per dataset, the IoU of each class (mean over seeds) for every row: where a mIoU difference comes from."""
    lines, fewer = [], False
    for dataset in result["datasets"]:
        rows = [(name, result["table"].get(name, {}).get(dataset, {})) for name in result["configurations"]]
        rows = [(name, entry) for name, entry in rows if entry.get("per_class_iou")]
        if not rows:
            continue
        names = list(dict.fromkeys(c for _, entry in rows for c in entry["per_class_iou"]))
        lines += ["", f"IoU per class on {dataset} in %, mean over the seeds", "",
                  "| configuration | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for name, entry in rows:
            cells = []
            for c in names:
                value = entry["per_class_iou"].get(c)
                short = value is not None and value["n"] < len(entry["seeds"])
                fewer |= short
                cells.append("-" if value is None else f"{value['mean']:.1f}{'*' if short else ''}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if fewer:
        lines += ["", "\\* over fewer seeds than the row's mIoU: runs made before per-class IoU was kept lack it"]
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    """The study's table: mIoU mean ± std (pixel accuracy) per dataset, and the paired difference."""
    datasets, table = result["datasets"], result["table"]
    header = "| configuration | " + " | ".join(datasets) + " |"
    lines = [f"mIoU / pixel accuracy in %, mean ± std over k-means seeds {result['seeds']} (honest protocol)",
             "", header, "|---|" + "---|" * len(datasets)]
    def mean_std(entry: dict[str, Any], dataset: str) -> str:
        m, a = entry["miou"], entry["pixel_accuracy"]
        seeds = "" if m["n"] == len(result["seeds"]) else f" ({m['n']} seed{'s' if m['n'] > 1 else ''})"
        return f"{m['mean']:.1f} ± {m['std']:.1f} / {a['mean']:.1f}{seeds}"

    for name in result["configurations"]:
        cells = _cells(result, name, mean_std)
        bold = "**" if name == result["baseline"] else ""
        lines.append(f"| {bold}{name}{bold} | " + " | ".join(cells) + " |")
    lines += _summary(result)
    if result["baseline"]:
        lines += ["", f"Paired mIoU difference to `{result['baseline']}`, seed by seed: mean (min .. max)", "",
                  header, "|---|" + "---|" * len(datasets)]
        for name in result["configurations"]:
            if name == result["baseline"]:
                continue
            cells = []
            for dataset in datasets:
                diff = table.get(name, {}).get(dataset, {}).get("vs_baseline")
                cells.append(_difference(diff))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    versus = {n: c["versus"] for n, c in result["configurations"].items() if c.get("versus")}
    if versus:
        lines += ["", "Paired mIoU difference of a row to the row it differs from by one thing (`versus`), seed by "
                  "seed: mean (min .. max) over n seeds", "", "| row - versus | " + " | ".join(datasets) + " |",
                  "|---|" + "---|" * len(datasets)]
        for name, other in versus.items():
            cells = [_difference(table.get(name, {}).get(d, {}).get("vs_versus"), count=True) for d in datasets]
            lines.append(f"| {name} - {other} | " + " | ".join(cells) + " |")
    lines += _class_tables(result)
    lines += _minutes_table(result, header)
    if result.get("stale"):
        lines += ["", "Left out, made by an earlier command of their row (run the study again to replace them): "
                  + ", ".join(f"`{name}`" for name in result["stale"])]
    merged = result.get("merged") or {}
    taken = [f for f in merged.get("files", []) if f["runs"]]
    if taken:
        lines += ["", "Runs taken from earlier records (`--merge`), where this folder has none: " + "; ".join(
            f"{f['runs']} from `{f['file']}` (code {f['commit'] or 'not recorded'})" for f in taken)]
    if merged.get("left_out"):
        lines += ["", "Records left out: " + "; ".join(merged["left_out"])]
    if result.get("failed"):
        lines += ["", "Failed: " + "; ".join(f"`{name}`: {error}" for name, error in result["failed"].items())]
    lines += ["", "Configurations:", ""]
    for name, config in result["configurations"].items():
        what = {"discover": "discover.py", "inductive": f"discover.py with the centroids `{config['source']}` "
                "fitted on the dataset's fit_on split", "refine": f"train.py on `{config['source']}`'s pseudo masks "
                "(transductive)", "evaluate": f"evaluate.py of the network `{config['source']}` trained (same dataset "
                "and seed), nothing trained again"}[config["kind"]]
        lines.append(f"- `{name}`: {what} {' '.join(config['overrides'])}".rstrip())
    return "\n".join(lines) + "\n"


def _summary(result: dict[str, Any]) -> list[str]:
    """The rows by their labels (a study naming none has no summary): mIoU mean ± std, in brackets the
    seeds and the paired difference to the row's ``versus``; the best mean of each column in bold."""
    datasets, table, configs = result["datasets"], result["table"], result["configurations"]
    if not any(c.get("label") for c in configs.values()):
        return []
    best = {d: max((table[n][d]["miou"]["mean"] for n in configs if d in table.get(n, {})), default=None)
            for d in datasets}
    lines = ["", "mIoU in %, mean ± std over the seeds; in brackets their number and the paired difference to the "
             "row it differs from by one thing (`versus`); the best of each column in bold", "",
             "| row | " + " | ".join(result.get("dataset_labels", {}).get(d) or d for d in datasets) + " |",
             "|---|" + "---|" * len(datasets)]
    def summary(entry: dict[str, Any], dataset: str) -> str:
        m, versus = entry["miou"], entry.get("vs_versus")
        value = f"{m['mean']:.1f}" + (f" ± {m['std']:.1f}" if m["n"] > 1 else "")
        value = f"**{value}**" if round(m["mean"], 1) == round(best[dataset], 1) else value
        return f"{value} ({m['n']}" + (f"; {_signed(versus['mean'])})" if versus else ")")

    for name, config in configs.items():
        cells = _cells(result, name, summary)
        lines.append(f"| {config.get('label') or f'`{name}`'} | " + " | ".join(cells) + " |")
    return lines


def _cells(result: dict[str, Any], name: str, text) -> list[str]:
    """Row ``name``'s cell per dataset: ``text(entry, dataset)``, or - where it has no runs there."""
    table = result["table"].get(name, {})
    return [text(table[d], d) if d in table else "-" for d in result["datasets"]]


def _signed(value: float) -> str:
    """``value`` to one decimal with its sign; a mean that rounds to zero is +0.0, not -0.0."""
    return f"{round(value, 1) + 0.0:+.1f}"


def _difference(diff: dict[str, Any] | None, count: bool = False) -> str:
    if diff is None:
        return "-"
    seeds = f"; {diff['n']}" if count else ""
    return f"{_signed(diff['mean'])} ({_signed(diff['min'])} .. {_signed(diff['max'])}{seeds})"


def _minutes_table(result: dict[str, Any], header: str) -> list[str]:
    """Wall minutes per configuration and dataset, as the command measured them: the first seed a run
    of the command finished (start-up and backbone passes not cached yet: cold on a fresh cache), the
    slowest later seed, and their total."""
    datasets, table = result["datasets"], result["table"]
    timed = [n for n in result["configurations"] if any("minutes" in table.get(n, {}).get(d, {}) for d in datasets)]
    if not timed:
        return []
    lines = ["", "Wall minutes as this command measured them: first seed (with start-up and uncached backbone "
             "passes) / slowest later seed (total)", "", header, "|---|" + "---|" * len(datasets)]
    total = 0.0
    for name in timed:
        cells = []
        for dataset in datasets:
            minutes = table.get(name, {}).get(dataset, {}).get("minutes")
            if minutes is None:
                cells.append("-")
                continue
            total += minutes["total"]
            first, later = (f"{v:.1f}" if v is not None else "-" for v in (minutes["first"], minutes["later_max"]))
            cells.append(f"{first} / {later} ({minutes['total']:.1f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, "", f"All timed runs: {total:.1f} min."]


def figure(result: dict[str, Any]):
    """Bars per dataset, one per configuration that has runs: the mean, the seed spread (± std) as error
    bars and each seed's value as a dot (how many seeds, and whether one of them is an outlier)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    datasets, table = result["datasets"], result["table"]
    names = [n for n in result["configurations"] if table.get(n)] or list(result["configurations"])
    fig, axes = plt.subplots(1, 2, figsize=(max(7, 1.8 * len(datasets) * 2), 4.2 + 0.18 * ((len(names) + 3) // 4)))
    width = 0.8 / max(len(names), 1)
    colours = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for ax, metric, label in zip(axes, ("miou", "pixel_accuracy"), ("mIoU (%)", "pixel accuracy (%)")):
        for i, name in enumerate(names):
            x = [d + (i - (len(names) - 1) / 2) * width for d in range(len(datasets))]
            entries = [table.get(name, {}).get(d, {}).get(metric) for d in datasets]
            ax.bar(x, [e["mean"] if e else 0 for e in entries], width, yerr=[e["std"] if e else 0 for e in entries],
                   capsize=2, label=name, color=colours(i % colours.N), alpha=0.85)
            for xi, entry in zip(x, entries):
                if entry:
                    ax.plot([xi] * len(entry["values"]), entry["values"], ".", color="black", markersize=2.5)
        ax.set_xticks(range(len(datasets)), datasets)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=min(len(names), 4), fontsize=7,
               frameon=False)
    fig.suptitle(f"mean ± std over seeds {result['seeds']} (dots: each seed)", fontsize=9)
    fig.tight_layout(rect=(0, 0.05 * ((len(names) + 3) // 4), 1, 1))
    return fig


def write_results(result: dict[str, Any], out: Path) -> None:
    write_json(out / "quality.json", result)
    markdown = to_markdown(result)
    atomic_write(out / "quality.md", lambda f: f.write(markdown.encode()))
    save_figure(out / "quality.png", figure(result))


def bench_quality(study: Study, out: Path, extra: list[str], *, quiet: bool = False,
                  report: Study | None = None, run: bool = True, merge: list[Path] = ()) -> dict[str, Any]:
    """Run every cell's missing seeds (sources first), then write and return the results.

    A cell whose run fails is reported (its error line and log) and left out; the others go on. The
    results cover ``report`` (default: ``study``): a call narrowed to some rows, datasets or seeds runs
    only those, but its tables keep every finished run of the whole study in ``out``. ``run=False``
    runs nothing and writes the tables from the finished runs. ``merge``: earlier ``quality.json`` files
    whose recorded runs count as finished where ``out`` has none (:func:`load_records`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    check_overrides(extra, "overrides for every run")
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out} is a file: name a folder for the runs and the results")
    records = load_records(list(merge), report or study, extra)
    for note in records.left_out:
        print(f"--merge: left out {note}", file=sys.stderr)
    cells = plan(study, out, extra)
    records.attach(cells)

    def results(failures: dict[str, str]) -> dict[str, Any]:
        shown = cells if report is None else plan(report, out, extra)
        records.attach(shown)
        result = collect(report or study, shown)
        result.update(failed=failures, commit=code_version(), extra=_portable(extra),
                      dataset_overrides={n: d.overrides for n, d in (report or study).datasets.items()},
                      dataset_labels={n: d.label for n, d in (report or study).datasets.items() if d.label},
                      merged={"files": records.files, "left_out": records.left_out})
        write_results(result, out)
        return result

    if not run:
        if not (out / "runs").is_dir() and not records.runs:
            raise StudyError(f"--out {out} holds no runs of a study, and no --merge record adds any: nothing to report")
        return results({})
    work = _work(study, cells)
    preflight([cell for cell, seeds in work if seeds])
    out.mkdir(parents=True, exist_ok=True)
    failures: dict[str, str] = {}
    total = sum(len(seeds) for _, seeds in work)
    planned = sum(len(cell.seeds(study)) for cell in cells)
    print(f"{len(cells)} configurations x datasets, {len(study.seeds)} seeds: {total} runs to do "
          f"({planned - total} finished before) -> {out}", file=sys.stderr)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=quiet, transient=False) as progress:
        task = progress.add_task("quality", total=total)
        for cell, seeds in work:
            if not seeds:
                continue
            blocked = cell.config.source and any(k.startswith(f"{cell.config.source}/") for k in failures)
            name = f"{cell.config.name}/{cell.dataset.name}"
            if blocked:
                failures[name] = f"not run: configuration {cell.config.source} failed"
                progress.advance(task, len(seeds))
                continue
            progress.update(task, description=f"{name} (seeds {','.join(map(str, seeds))})")
            start = time.monotonic()
            error = run_cell(cell, seeds, progress, task)
            minutes = (time.monotonic() - start) / 60
            if error:
                failures[name] = error
                progress.console.print(f"[red]failed[/red] {name}: {error} (log: {cell.folder / 'multirun.log'})")
            else:
                scores = [cell.result(s) for s in seeds]
                mious = " ".join(f"{100 * r['miou']:.1f}" if r else "?" for r in scores)
                progress.console.print(f"{name}: mIoU {mious} ({minutes:.1f} min)")
    return results(failures)
