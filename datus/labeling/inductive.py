"""Inductive labelling: a split labelled with the centroids another run fitted, without re-clustering.

The field's protocol (STEGO, PriMaPs) fits the clusters on the training split and labels the
validation split with them; DatUS² clusters each split itself (transductive). Centroids can only
label features of the same kind, so ``centroids.npz`` records what its features were
(:func:`feature_settings`) and :func:`check_centroids` refuses another run's features by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datus.labeling.kmeans import KMeans

#: Settings of the backbone and resize nodes that do not change a feature (where files are kept,
#: which images are skipped): left out of the comparison.
_NOT_FEATURES = frozenset({"_target_", "cache_dir", "max_patches", "max_aspect_ratio"})


class CentroidsError(ValueError):
    """A ``labeling.centroids`` file cannot label this run's features (message names the setting)."""


def _dotted(prefix: str, node: Any) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _NOT_FEATURES:
            flat.update(_dotted(f"{prefix}.{key}", value))
    return flat


def feature_settings(*, backbone: dict[str, Any] | None, resize: dict[str, Any] | None, method: str,
                     features: dict[str, str], labeling: dict[str, Any], head: str | None) -> dict[str, Any]:
    """What decides the clustered features, as ``{dotted setting: value}``: the backbone (its weights'
    file identity included), the resize, the method and the patch features it reads (e.g.
    ``graph.segment_feature``), the labeller's segment features (``labeling.features``, crops) and the
    feature head's file digest (None without a head)."""
    settings = {**_dotted("backbone", backbone or {}), **_dotted("resize", resize or {}), "method": method}
    settings.update(features)
    settings.update(labeling)
    settings["head"] = head
    return settings


def load_centroids(path: str | Path, *, k: int) -> KMeans:
    """The fitted :class:`KMeans` of a ``labeling/centroids.npz``; refuses a missing or foreign file and
    another K, naming the setting."""
    path = Path(path).expanduser()
    setting = f"labeling.centroids={path}"
    if not path.is_file():
        raise CentroidsError(f"{setting}: no such file (a run's labeling/centroids.npz)")
    try:
        kmeans = KMeans.load(path)
    except (OSError, ValueError, KeyError) as err:
        raise CentroidsError(f"{setting}: not a centroids file written by discover.py ({type(err).__name__}: "
                             f"{err})") from err
    if kmeans.settings is None or "features" not in kmeans.settings:
        raise CentroidsError(f"{setting} does not record what features it was fitted on (written before datus "
                             "recorded them): rerun discover.py on the split it was fitted on")
    if kmeans.k != k:
        raise CentroidsError(f"k={k} but {setting} holds {kmeans.k} centroids: pass k={kmeans.k}")
    return kmeans


def check_centroids(kmeans: KMeans, path: str | Path, current: dict[str, Any], *, skip: tuple[str, ...] = ()) -> None:
    """Refuse centroids fitted on other features than ``current`` (:func:`feature_settings`), naming the
    first setting that differs; ``skip`` leaves settings out (e.g. the head, before it is trained)."""
    recorded = (kmeans.settings or {}).get("features", {})
    for key in sorted(set(recorded) | set(current), key=lambda name: (name != "method", name)):  # method first
        if key in skip or recorded.get(key) == current.get(key):
            continue
        raise CentroidsError(
            f"labeling.centroids={path} was fitted on features with {key}={recorded.get(key)!r}, this run's "
            f"have {key}={current.get(key)!r}: its centroids cannot label them (label with the same {key} as "
            "the run that fitted them, or drop labeling.centroids to cluster this split itself)")
