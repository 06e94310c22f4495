"""Open-vocabulary pseudo labels (``method=clip_sam``, Seifi et al. 2024): SAM's masks named by CLIP."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from datus.io import write_npz
from datus.labeling.run import ScoresToMask
from datus.masks import save_masks
from datus.methods.base import Job, Method
from datus.runs import job_lock

log = logging.getLogger(__name__)


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
