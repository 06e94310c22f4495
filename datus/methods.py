"""Methods (``conf/method``): what turns a split's images into features that the labeler clusters.

Each method has one small interface, so the pipeline composes objects and never branches on a
method's name:

- :meth:`Method.cache_key`: the settings its backbone passes depend on (the cache entry's key);
- :meth:`Method.compute`: its backbone passes into ``work`` (resumable, every DDP rank);
- :meth:`Method.label`: rank 0 clusters what was computed and writes the pseudo masks.

A new method (e.g. features from a trained head) is a class here and a YAML file in
``conf/method/``.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datus.backbones import Backbone
from datus.discovery import SceneDecomposer, SegmentStore, run_discovery
from datus.io import atomic_write, load_json, write_npz
from datus.labeling import Labeler, PatchTokens
from datus.labeling.run import ScoresToMask, label_patches
from datus.masks import save_masks
from datus.refine.features import FeatureCache
from datus.runs import job_lock
from datus.shards import ArrayStore, Manifest, PredictLoop
from datus.wnet import WNetTraining

log = logging.getLogger(__name__)

#: Which part of a method a job runs: all, its backbone passes only, or labelling only.
STAGES = ("all", "segments", "labels")


@dataclass
class Job:
    """What one pipeline job hands a method: the backbone, the predict loop over the split, where
    the backbone passes live (``work``: the cache entry or the run dir), and which part to run."""

    backbone: Backbone | None
    loop: PredictLoop
    work: Path
    out_dir: Path
    labeler: Labeler
    num_pictures: int
    stage: str = "all"
    indices: range | None = None
    settings: dict[str, Any] | None = None
    overwrite: bool = False
    rank: int = 0
    #: this job's block of the split, (index, count): one task of a sharded discovery
    shard: tuple[int, int] = (0, 1)
    #: the split's files now (:func:`datus.shards.dataset_manifest`): stores match records by it
    manifest: Manifest | None = None
    #: what the clustered features are (:func:`datus.labeling.inductive.feature_settings`) and the split
    #: they come from: recorded in ``centroids.npz``, checked where another split is labelled with it
    feature_settings: dict[str, Any] | None = None
    fit_on: dict[str, Any] | None = None
    #: frozen feature maps of the split, computed once and cached (what trained stages read)
    feature_cache: FeatureCache | None = None

    def segments(self) -> SegmentStore:
        return SegmentStore(self.work / "segments", manifest=self.manifest)


class Method(ABC):
    """A way from images to pseudo masks through the :class:`~datus.labeling.Labeler`."""

    #: the name in summaries and reports (the ``conf/method`` file's)
    name: str
    #: the cache's kind of entry (``<cache_dir>/<kind>/<hash>``); None: nothing to cache by settings
    cache_kind: str | None
    #: whether ``stage=segments|labels`` and ``shard.count`` split this method's work
    staged: bool = False
    #: whether it reads a backbone's features (W-Net reads pixels only: no backbone is built)
    uses_backbone: bool = True
    #: whether ``labeling.centroids`` (another run's clusters) can label its features
    inductive: bool = False

    def check(self, *, k: int) -> None:  # noqa: B027 - optional hook: most methods have nothing to check
        """Refuse bad settings before anything is built or read (e.g. a trained file made for another K)."""

    def prepare(self, dataset, *, cache_root: Path, k: int) -> dict[str, Any]:
        """Train what the method learns from the split before its passes (e.g. a W-Net), or load it from
        ``cache_root``; returns what to put in the summary. Called before :meth:`cache_key`."""
        return {}

    def cache_key(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The settings its backbone passes depend on (backbone, dataset, resize, graph, ...)."""
        return settings

    @abstractmethod
    def features_read(self) -> dict[str, str]:
        """The patch features it reads, by the setting that names each (checked before any work)."""

    @abstractmethod
    def compute(self, job: Job) -> dict[str, Any]:
        """Run the backbone passes missing from ``job.work``; returns what to put in the summary."""

    @abstractmethod
    def label(self, job: Job, scores_to_mask: ScoresToMask | None) -> dict[str, Any]:
        """Cluster and write ``job.out_dir/pseudo_masks``; returns the labelling summary."""

    def scores_to_mask(self, labeler: Labeler, crf, dataset) -> ScoresToMask | None:
        """How ``postprocess`` (the dense CRF, or None) turns this method's per-pixel or per-patch scores
        into a mask: by default the labeler's cluster scores (cosine to the centroids) as logits."""
        return labeler.scores_to_mask(crf, dataset)


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


class KMeansPatches(Method):
    """The baseline every paper reports: k-means on the L2-normalised patch features, no graph."""

    name = "kmeans_patches"
    cache_kind = "patch_features"
    inductive = True

    def __init__(self, *, patch_feature: str = "tokens") -> None:
        self.patch_feature = patch_feature

    def cache_key(self, settings: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in settings.items() if k != "graph"}, "patch_feature": self.patch_feature}

    def features_read(self) -> dict[str, str]:
        return {"method.patch_feature": self.patch_feature}

    def _store(self, job: Job) -> ArrayStore:
        return ArrayStore(job.work / f"patch_{self.patch_feature}", manifest=job.manifest)

    def compute(self, job: Job) -> dict[str, Any]:
        store = self._store(job)
        with job_lock(job.work / f".lock-rank{job.rank}", f"patch features in {job.work}"):
            computed = job.loop.run(PatchTokens(job.backbone, self.patch_feature), store)
        return {"patch_tokens_computed_this_run": len(computed), "patch_features_dir": str(store.folder)}

    def label(self, job: Job, scores_to_mask: ScoresToMask | None) -> dict[str, Any]:
        summary = job.labeler.label_patches(self._store(job).read(), job.out_dir, scores_to_mask,
                                            features=job.feature_settings, fit_on=job.fit_on)
        summary["patch_feature"] = self.patch_feature
        return summary


class WNetMethod(Method):
    """W-Net (Xia & Kulis 2017): a W-Net trained without labels on the split (or ``wnet.train_split``);
    each pixel's argmax over its K memberships is the mask (through the dense CRF with ``postprocess=crf``),
    and regions smaller than ``min_region`` of the image are merged into a neighbour (the paper's two
    post-processing steps; 0: none). Reads pixels only: no backbone."""

    name = "wnet"
    cache_kind = None
    uses_backbone = False

    def __init__(self, *, wnet: WNetTraining, min_region: float = 0.0) -> None:
        if not 0 <= float(min_region) < 1:
            raise ValueError(f"method.min_region={min_region} must be a fraction of the image in [0, 1)")
        self.wnet, self.min_region = wnet, float(min_region)
        self._model = None
        self._cache_root: Path | None = None

    def features_read(self) -> dict[str, str]:
        return {}

    def check(self, *, k: int) -> None:
        self.wnet.check(k)

    def prepare(self, dataset, *, cache_root: Path, k: int) -> dict[str, Any]:
        self._model, self._cache_root = self.wnet.prepare(dataset, cache_root=cache_root, k=k), Path(cache_root)
        return {"wnet": self.wnet.summary()}

    def compute(self, job: Job) -> dict[str, Any]:
        return {}

    def scores_to_mask(self, labeler: Labeler, crf, dataset) -> ScoresToMask | None:
        """The CRF on the log-memberships (the paper's post-processing), with each original image."""
        if crf is None:
            return None

        def to_mask(index: int, probs: np.ndarray) -> np.ndarray:
            image = dataset.load(index)["image"].permute(1, 2, 0).numpy()
            return crf(image, torch.from_numpy(np.log(np.clip(probs, 1e-8, 1.0))))

        return to_mask

    def label(self, job: Job, scores_to_mask: ScoresToMask | None) -> dict[str, Any]:
        from datus.wnet import memberships_to_mask, merge_small_regions, segment_bank

        if self._model is None:
            raise RuntimeError("WNetMethod.label before prepare")
        bank = self.wnet.bank(job.loop.dataset, self._cache_root)

        def masks():
            for position, probs in segment_bank(self._model, bank, device=self.wnet.device):
                index, size = bank.indices[position], bank.sizes[position]
                mask = memberships_to_mask(probs, size) if scores_to_mask is None else scores_to_mask(index, probs)
                yield bank.stems[position], merge_small_regions(mask, round(self.min_region * mask.size)), size

        written = save_masks(job.out_dir, masks(), job.labeler.k)
        self.wnet.copy_pictures(job.out_dir / "pictures")
        for entry in bank.skipped:
            log.warning("skipped %s: %s", entry["stem"], entry["error"])
        return {"method": self.name, "k": job.labeler.k, "images": len(bank), "skipped": bank.skipped,
                "postprocessed": scores_to_mask is not None, "min_region": self.min_region,
                "coverage": written["coverage"],
                "cluster_pixels": written["cluster_pixels"]}


class ClipSam(Method):
    """Annotation-free, open-vocabulary pseudo labels (Seifi et al. 2024): SAM's automatic masks, each
    named by CLIP with the dataset's class names (label i = class i: evaluate with ``matching=identity``).

    The four models are ONNX files the user supplies (``clip_image``, ``clip_text``, ``sam_encoder``,
    ``sam_decoder``); each is checked before any image is read. K is the number of class names.
    With the SAM files only, the masks are SAM's and their names k-means clusters of the backbone's
    ``feature`` averaged over each mask (Hungarian matching, like DatUS²).
    """

    name = "clip_sam"
    cache_kind = "clip_sam"

    def __init__(self, *, clip_image: str | None = None, clip_text: str | None = None, sam_encoder: str | None = None,
                 sam_decoder: str | None = None, templates: list[str] | tuple[str, ...] = ("a photo of a {name}.",),
                 class_names: list[str] | None = None, sam: dict | None = None, clip: dict | None = None,
                 feature: str = "keys") -> None:
        from datus.openvocab.tokenizer import prompts

        self.files = {"clip_image": clip_image, "clip_text": clip_text, "sam_encoder": sam_encoder,
                      "sam_decoder": sam_decoder}
        self.templates, self.class_names = list(templates), None if class_names is None else list(class_names)
        self.sam_settings, self.clip_settings = dict(sam or {}), dict(clip or {})
        prompts(["x"], self.templates)  # a template without {name} is refused now
        self.feature = feature
        self._generator = self._namer = None

    @property
    def sam_only(self) -> bool:
        """No CLIP file is set: SAM's masks, named by k-means clusters of backbone features."""
        return self.files["clip_image"] is None and self.files["clip_text"] is None

    @property
    def uses_backbone(self) -> bool:
        return self.sam_only

    def features_read(self) -> dict[str, str]:
        return {"method.feature": self.feature} if self.sam_only else {}

    def check(self, *, k: int) -> None:
        """Open the model files (a missing or wrong one is named, with how to export it)."""
        from datus.openvocab import AutomaticMasks, ClipImageEncoder, ClipTextEncoder, SamImageEncoder, SamPromptDecoder

        if not any(self.files.values()):
            raise ValueError("method=clip_sam needs CLIP and SAM as ONNX files (method.clip_image, method.clip_text, "
                             "method.sam_encoder, method.sam_decoder; README \"Open vocabulary\" says how to export "
                             "them); without them, use method=datus")
        if not self.sam_only:
            self._encoders = (ClipImageEncoder(self.files["clip_image"]), ClipTextEncoder(self.files["clip_text"]))
        else:
            log.warning("method=clip_sam without CLIP files: SAM's masks named by k-means clusters of %s "
                        "(evaluate with matching=hungarian)", self.feature)
        self._generator = AutomaticMasks(SamImageEncoder(self.files["sam_encoder"]),
                                         SamPromptDecoder(self.files["sam_decoder"]), **self.sam_settings)

    def names(self, dataset) -> list[str]:
        return self.class_names if self.class_names is not None else list(dataset.classes)

    def prepare(self, dataset, *, cache_root: Path, k: int) -> dict[str, Any]:
        from datus.openvocab import ClipNamer

        if self._generator is None:
            self.check(k=k)
        if self.sam_only:
            return {"clip_sam_mode": "sam only: masks named by k-means clusters"}
        names = self.names(dataset)
        if len(names) != k:
            raise ValueError(f"k={k} but method=clip_sam names {len(names)} classes ({', '.join(names[:5])}"
                             f"{', ...' if len(names) > 5 else ''}): each label is a class, so pass k={len(names)}")
        self._namer = ClipNamer(*self._encoders, names, templates=self.templates, **self.clip_settings)
        return {"class_names": names}

    def cache_key(self, settings: dict[str, Any]) -> dict[str, Any]:
        from datus.runs import files_fingerprint

        models = {name: None if path is None else files_fingerprint([(name, Path(path).expanduser())])
                  for name, path in self.files.items()}
        key = {"dataset": settings["dataset"], "models": models, "templates": self.templates,
               "class_names": self.class_names, "sam": self.sam_settings, "clip": self.clip_settings}
        if self.sam_only:  # the mask features come from the backbone
            key.update(backbone=settings["backbone"], resize=settings["resize"], feature=self.feature)
        return key

    def compute(self, job: Job) -> dict[str, Any]:
        from datus.openvocab.stage import label_split, segment_split

        with job_lock(job.work / ".lock", f"SAM + CLIP labels in {job.work}"):
            if self.sam_only:
                return {"clip_sam": segment_split(job.loop.dataset, job.work, self._generator, job.backbone,
                                                  self.feature)}
            return {"clip_sam": label_split(job.loop.dataset, job.work, self._generator, self._namer)}

    def label(self, job: Job, scores_to_mask: ScoresToMask | None) -> dict[str, Any]:
        from datus.openvocab.stage import cluster_split, read_labels

        if scores_to_mask is not None:
            raise ValueError("postprocess=crf: method=clip_sam writes SAM's masks as they are; use postprocess=none")
        if self.sam_only:
            written = save_masks(job.out_dir, cluster_split(job.loop.dataset, job.work, job.labeler.kmeans),
                                 job.labeler.k)
            job.labeler.kmeans.save(job.out_dir / "labeling" / "centroids.npz")
            return {"method": self.name, "mode": "sam only", "k": job.labeler.k, "coverage": written["coverage"],
                    "cluster_pixels": written["cluster_pixels"]}
        written = save_masks(job.out_dir, read_labels(job.loop.dataset, job.work), job.labeler.k)
        write_npz(job.out_dir / "labeling" / "text_embeddings.npz", text_embeddings=self._namer.text_embeddings,
                  class_names=np.array(self._namer.class_names))
        return {"method": self.name, "k": job.labeler.k, "class_names": self._namer.class_names,
                "coverage": written["coverage"], "cluster_pixels": written["cluster_pixels"]}


class PriMaPsMethod(Method):
    """PriMaPs-EM (Hahn et al., TMLR 2024): principal mask proposals per image, class prototypes started by
    k-means (``labeling.kmeans.seed``) and fitted to the proposals by stochastic EM; each pixel takes the
    teacher's most aligned prototype (bilinear logits, or the dense CRF with ``postprocess=crf``)."""

    name = "primaps"
    cache_kind = None

    def __init__(self, **settings) -> None:
        from datus.primaps import PriMaPs

        self.primaps = PriMaPs(**settings)  # every setting is checked here, before any image is read
        self._fitted = None

    def features_read(self) -> dict[str, str]:
        return {"method.features": ",".join(self.primaps.spec.names)}

    def compute(self, job: Job) -> dict[str, Any]:
        self._fitted = self.primaps.fit(job.backbone, job.loop.dataset, backbone_settings=(job.settings or {}).get(
            "backbone", {"name": job.backbone.name}), cache=job.feature_cache, k=job.labeler.k,
            seed=job.labeler.kmeans.seed)
        return {"primaps": self.primaps.report}

    def scores_to_mask(self, labeler: Labeler, crf, dataset) -> ScoresToMask | None:
        """The CRF on the teacher's logits (PriMaPs' test-time CRF), with each original image."""
        if crf is None:
            return None

        def to_mask(index: int, logits: np.ndarray) -> np.ndarray:
            image = dataset.load(index)["image"].permute(1, 2, 0).numpy()
            return crf(image, torch.as_tensor(logits))

        return to_mask

    def label(self, job: Job, scores_to_mask: ScoresToMask | None) -> dict[str, Any]:
        from datus.postprocess import labels_from_scores
        from datus.primaps import PriMaPs

        if self._fitted is None:
            raise RuntimeError("PriMaPsMethod.label before compute")
        index, teacher = self._fitted

        def masks():
            for i in sorted(index.entries):
                logits = PriMaPs.logits(teacher, index, i)
                size = index.orig_size(i)
                mask = labels_from_scores(logits, size) if scores_to_mask is None else scores_to_mask(i, logits)
                yield index.stem(i), mask, size

        written = save_masks(job.out_dir, masks(), job.labeler.k)
        return {"method": self.name, "k": job.labeler.k, "images": len(index), "postprocessed": scores_to_mask is not None,
                "coverage": written["coverage"], "cluster_pixels": written["cluster_pixels"]}


class StegoMethod(KMeansPatches):
    """STEGO's read-out (Hamilton et al. 2022) of a feature head's codes (``head=stego``): its cluster probe,
    K cosine centroids trained by minibatch gradient descent on the split's codes (``labeling.kmeans.seed``),
    each patch its most similar centroid; ``postprocess=crf`` feeds ``log_softmax(cosine / temperature)``
    to the dense CRF, as STEGO evaluates (temperature 0.5: STEGO's ``alpha=2``)."""

    name = "stego"
    inductive = False  # its probe is fitted in label(): labeling.centroids is refused

    def __init__(self, *, probe, temperature: float = 0.5) -> None:
        from datus.labeling.probe import ClusterProbe

        super().__init__(patch_feature="codes")
        self.probe = probe if isinstance(probe, ClusterProbe) else ClusterProbe(**probe)
        if float(temperature) <= 0:
            raise ValueError(f"method.temperature={temperature} must be > 0")
        self.temperature = float(temperature)

    def features_read(self) -> dict[str, str]:
        return {"method.patch_feature": "codes"}

    def scores_to_mask(self, labeler: Labeler, crf, dataset) -> ScoresToMask | None:
        if crf is None:
            return None

        def to_mask(index: int, scores: np.ndarray) -> np.ndarray:
            image = dataset.load(index)["image"].permute(1, 2, 0).numpy()
            return crf(image, torch.from_numpy(np.asarray(scores, dtype=np.float32) / self.temperature))

        return to_mask

    def label(self, job: Job, scores_to_mask: ScoresToMask | None) -> dict[str, Any]:
        patches = self._store(job).read()
        kmeans = self.probe.fit(patches, k=job.labeler.k, seed=job.labeler.kmeans.seed)
        summary = label_patches(patches, out_dir=job.out_dir, kmeans=kmeans, scores_to_mask=scores_to_mask, fit=False,
                                settings={"features": job.feature_settings or {}, "fit_on": job.fit_on})
        summary.update(method=self.name, probe=self.probe.report, fitted=True,
                       patches_clustered=self.probe.report["patches"])
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
    target = (work / "segments").resolve()
    if link.is_symlink() and link.resolve() != target:
        link.unlink()
    if not link.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=True)
    for picture in sorted((work / "pictures").glob("*.png")):
        copy, data = out_dir / "pictures" / picture.name, picture.read_bytes()
        if not copy.is_file() or copy.read_bytes() != data:  # missing, or damaged since: copy again
            atomic_write(copy, lambda f, d=data: f.write(d))
