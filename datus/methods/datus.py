"""DatUS² (``method=datus``): scene decomposition (affinity graph, Louvain, regions), then k-means over segments."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from datus.discovery import SceneDecomposer, SegmentStore, run_discovery
from datus.io import atomic_symlink, atomic_write, load_json
from datus.labeling.run import ScoresToMask
from datus.methods.base import Job, Method
from datus.runs import job_lock


class Datus(Method):
    """DatUS²: scene decomposition (affinity graph, Louvain, connected regions), then k-means
    over the segments' features."""

    name = "datus"
    cache_kind = "discovery"
    staged = True
    inductive = True

    def __init__(self, *, decomposer: SceneDecomposer) -> None:
        self.decomposer = decomposer

    def check(self, *, k: int) -> None:
        self.decomposer.check(k=k)

    def prepare(self, dataset, *, cache_root: Path, k: int) -> dict[str, Any]:
        return self.decomposer.prepare(dataset, cache_root=cache_root, k=k)

    def cache_key(self, settings: dict[str, Any]) -> dict[str, Any]:
        return {**settings, **self.decomposer.cache_key()}

    def features_read(self) -> dict[str, str]:
        read = {"graph.feature": self.decomposer.feature, "graph.segment_feature": self.decomposer.segment_feature}
        if self.decomposer.segment_blocks:
            read["graph.segment_blocks"] = str(list(self.decomposer.segment_blocks))
        return read

    def compute(self, job: Job) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        segments = job.segments()
        if job.stage in ("all", "segments"):
            with job_lock(job.work / f".lock-{job.shard[0]}-of-{job.shard[1]}-rank{job.rank}", f"segments in {job.work}"):
                summary = run_discovery(
                    job.backbone, decomposer=self.decomposer, dataset=job.loop.dataset,
                    trainer=job.loop.make_trainer(), out_dir=job.work, settings=job.settings or {},
                    batch_size=job.loop.batch_size, num_workers=job.loop.num_workers,
                    shard_size=job.loop.shard_size, overwrite=job.overwrite,
                    # a whole run draws its pictures once, with the pseudo mask, after labelling
                    num_pictures=job.num_pictures if job.stage == "segments" else 0,
                    indices=job.indices,
                )
        elif (job.work / "summary.json").is_file():
            summary = load_json(job.work / "summary.json")
        if job.work != job.out_dir and segments.folder.is_dir():
            _link_discovery(job.work, job.out_dir)
        if job.stage in ("all", "labels"):
            if not segments.shards():
                raise ValueError(f"stage=labels: no segments in {segments.folder}; run stage=segments first")
            _check_complete(segments, job.loop.dataset)
            start = time.perf_counter()
            job.labeler.embed_segments(job.backbone, job.loop, segments, job.work, job.rank)
            summary["segment_features_seconds"] = time.perf_counter() - start  # crops' forwards, if any
        return summary

    def label(self, job: Job, scores_to_mask: ScoresToMask | None) -> dict[str, Any]:
        summary = job.labeler.label_segments(job.backbone, job.segments(), job.work, job.out_dir, scores_to_mask,
                                             features=job.feature_settings, fit_on=job.fit_on)
        _pictures_with_masks(job)
        return summary


def _pictures_with_masks(job: Job) -> None:
    """The run's pictures (photo | communities | valid segments | pseudo mask) of the first
    ``num_pictures`` images, and of any decomposition picture already in ``pictures/`` (copied from
    a cached discovery): the product's output belongs in the picture. Drawn once, after labelling."""
    from datus.discovery.store import SegmentLookup
    from datus.figures import decomposition_figure
    from datus.io import save_figure
    from datus.masks import read_mask, upsample_nearest

    dataset = job.loop.dataset
    index_of = {s.stem: i for i, s in enumerate(dataset.samples)}
    folder = job.out_dir / "pictures"
    wanted = set(range(min(job.num_pictures, len(dataset))))
    wanted |= {index_of[p.stem] for p in folder.glob("*.png") if p.stem in index_of}
    if not wanted:
        return
    lookup = SegmentLookup(job.segments())
    for index in sorted(wanted):
        stem = dataset.samples[index].stem
        mask_path = job.out_dir / "pseudo_masks" / f"{stem}.png"
        if index not in lookup or not mask_path.is_file():
            continue
        image = dataset[index]["image"].permute(1, 2, 0).numpy()
        mask = upsample_nearest(read_mask(mask_path), image.shape[:2])
        fig = decomposition_figure(image, lookup[index].decomposition, stem, mask=mask, k=job.labeler.k)
        save_figure(folder / f"{stem}.png", fig)


def _check_complete(segments: SegmentStore, dataset) -> None:
    """Refuse to cluster a split whose discovery is unfinished (e.g. a shard task still running)."""
    have = segments.done_indices() | {int(s["index"]) for s in segments.skipped()}
    missing = [i for i in range(len(dataset)) if i not in have]
    if missing:
        names = ", ".join(dataset.samples[i].stem for i in missing[:5])
        raise ValueError(
            f"{len(missing)} of {len(dataset)} images have no segments in {segments.folder} (e.g. {names}): "
            "finish discovery first (every shard.index of stage=segments), then run stage=labels"
        )


def _link_discovery(work: Path, out_dir: Path) -> None:
    """Make the cached discovery visible in the run's folder: ``segments`` link, copied pictures."""
    link = out_dir / "segments"
    if not (link.exists() and not link.is_symlink()):  # a run dir's own segments stay
        atomic_symlink(link, (work / "segments").resolve())  # every DDP rank links it, at once
    for picture in sorted((work / "pictures").glob("*.png")):
        copy, data = out_dir / "pictures" / picture.name, picture.read_bytes()
        if not copy.is_file() or copy.read_bytes() != data:  # missing, or damaged since: copy again
            atomic_write(copy, lambda f, d=data: f.write(d))
