"""Quality that holds: masks of another size than their photo (real SUIM pairs), inductive labelling
(another run's centroids), and the quality command (configurations x datasets x seeds)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from datus.bench.quality import StudyError, bench_quality, load_study
from datus.data import SUIM, MaskError
from datus.discovery import SegmentStore
from datus.evaluation import evaluate_masks
from datus.labeling import KMeans
from datus.masks import patch_labels, read_mask, upsample_labels
from tests.conftest import PROJECT_ROOT, run_discover

#: real SUIM pairs: two whose mask is 590x430 for a 590x375 photo (as released), two that fit
MISMATCHED = ("f_r_1068_", "f_r_1069_")
FITTING = ("d_r_132_", "d_r_153_")


@pytest.fixture
def suim_sample(tmp_path, suim_root) -> Path:
    """A SUIM root (official layout) holding four real train_val pairs, two of them mismatched."""
    root = tmp_path / "suim"
    for folder in ("images", "masks"):
        (root / "train_val" / folder).mkdir(parents=True)
    for stem in (*MISMATCHED, *FITTING):
        for path in (suim_root / "train_val").glob(f"*/{stem}.*"):
            shutil.copy(path, root / "train_val" / path.parent.name / path.name)
    return root


def test_mismatched_masks_are_refused_by_default_listing_every_pair(suim_sample):
    with pytest.raises(MaskError) as info:
        SUIM(suim_sample, "train_val")
    message = str(info.value)
    assert message.startswith("2 of 4 masks of suim split 'train_val' do not have their photo's size")
    for stem in MISMATCHED:
        assert f"masks/{stem}.png is 590x430 (width x height) but its image" in message
        assert f"images/{stem}.jpg is 590x375" in message
    assert "dataset.mask_size_mismatch=resize" in message and "dataset.mask_size_mismatch=skip" in message
    assert not any(stem in message for stem in FITTING)


def test_resize_fits_each_mask_to_its_photo_with_nearest_neighbour(suim_sample, caplog):
    dataset = SUIM(suim_sample, "train_val", mask_size_mismatch="resize")
    assert "2 of 4 masks" in caplog.text and "resized" in caplog.text
    for index, sample in enumerate(dataset.samples):
        item = dataset.load(index)
        assert tuple(item["mask"].shape) == tuple(item["image"].shape[1:])
        if sample.stem in MISMATCHED:  # labels are never interpolated: only the file's own classes appear
            stored = SUIM(suim_sample, "train_val", mask_size_mismatch="skip")._decode_mask(
                np.asarray(Image.open(sample.mask).convert("RGB")), sample.mask)
            assert set(np.unique(item["mask"].numpy())) <= set(np.unique(stored))
            rows = np.minimum(((np.arange(375) + 0.5) * 430 / 375).astype(int), 429)
            assert np.array_equal(item["mask"].numpy(), stored[rows])  # nearest neighbour, pixel centres
    assert [e["stem"] for e in dataset.mismatched_masks] == list(MISMATCHED)


def test_skip_leaves_the_images_out_of_evaluation_and_names_them(tmp_path, suim_sample):
    out = tmp_path / "run"
    run_discover(out, ["backbone=tiny_vit", "resize.size=64", "dataset=suim", f"dataset.root={suim_sample}",
                       "dataset.split=train_val", "dataset.mask_size_mismatch=skip", "k=3", "graph.min_patches=2",
                       f"paths.cache_dir={tmp_path / 'cache'}"])
    summary = json.loads((out / "summary.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    for record in (summary["mask_size_mismatch"], metrics["mask_size_mismatch"]):
        assert record["setting"] == "dataset.mask_size_mismatch=skip"
        assert [p["stem"] for p in record["pairs"]] == list(MISMATCHED)
    assert sorted(p.stem for p in (out / "pseudo_masks").glob("*.png")) == sorted((*MISMATCHED, *FITTING))
    # the scored pixels are exactly the fitting pairs' labelled pixels
    dataset = SUIM(suim_sample, "train_val", mask_size_mismatch="skip")
    labelled = sum(int((dataset.read_mask(s) != 255).sum()) for s in dataset.samples if s.stem in FITTING)
    assert metrics["labelled_pixels"] == labelled
    only_fitting = SUIM(suim_sample, "train_val", mask_size_mismatch="skip")
    only_fitting.samples = [s for s in only_fitting.samples if s.stem in FITTING]
    alone, _ = evaluate_masks(only_fitting, masks_dir=out / "pseudo_masks", num_clusters=3)
    assert alone["confusion_matrix"] == metrics["confusion_matrix"]


# ------------------------------------------------------------------------------ inductive labelling
def _labelled_folder(root: Path, split: str, stems: list[str]) -> None:
    """A folder split of real photos (scikit-image's, shrunk) with 3-class masks from their brightness."""
    from datus.data.demo import DEMO_FILES, skimage_data_dir

    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "true_masks").mkdir(parents=True, exist_ok=True)
    for stem, name in zip(stems, DEMO_FILES * 3):
        with Image.open(skimage_data_dir() / name) as photo:
            rgb = photo.convert("RGB").resize((96, 72))
        rgb.save(root / split / "images" / f"{stem}.png")
        grey = np.asarray(rgb).mean(axis=2)
        Image.fromarray(np.digitize(grey, [85, 170]).astype(np.uint8)).save(root / split / "true_masks" / f"{stem}.png")


FOLDER = ["backbone=tiny_vit", "resize.size=64", "dataset=folder", "dataset.num_classes=3", "k=3",
          "graph.min_patches=2"]


@pytest.fixture
def two_splits(tmp_path) -> Path:
    root = tmp_path / "data"
    _labelled_folder(root, "train", ["a0", "a1", "a2", "a3"])
    _labelled_folder(root, "val", ["b0", "b1", "b2"])
    return root


@pytest.mark.parametrize("method", ["datus", "kmeans_patches"])
def test_centroids_of_another_run_label_a_split_as_the_saved_centroids_do(tmp_path, two_splits, method):
    cache = tmp_path / "cache"
    common = [*FOLDER, f"dataset.root={two_splits}", f"method={method}", f"paths.cache_dir={cache}"]
    run_discover(tmp_path / "fit", [*common, "dataset.split=train"])
    centroids = tmp_path / "fit" / "labeling" / "centroids.npz"
    run_discover(tmp_path / "val", [*common, "dataset.split=val", f"labeling.centroids={centroids}"])
    summary = json.loads((tmp_path / "val" / "summary.json").read_text())
    assert summary["labeling"]["fitted"] is False and summary["labeling"]["centroids"] == str(centroids)
    assert summary["labeling"]["fit_on"]["split"] == "train"
    assert (tmp_path / "val" / "metrics.json").is_file()
    kmeans = KMeans.load(centroids)
    if method == "datus":
        for record in SegmentStore(tmp_path / "val" / "segments"):
            expected = kmeans.predict(record.decomposition.segment_features.astype(np.float32))
            mask = read_mask(tmp_path / "val" / "pseudo_masks" / f"{record.stem}.png")
            assert np.array_equal(mask, upsample_labels(patch_labels(record.decomposition.segments, expected),
                                                         record.orig_size))
    else:
        from datus.features import FeatureStore

        for record in FeatureStore(Path(summary["patch_features_dir"])).open().records().values():
            expected = kmeans.predict(record.rows.astype(np.float32)).reshape(record.meta[:2]).astype(np.uint8)
            mask = read_mask(tmp_path / "val" / "pseudo_masks" / f"{record.stem}.png")
            assert np.array_equal(mask, upsample_labels(expected, tuple(record.meta[2:4])))
    # the run's own centroids file names what labelled it and stays usable for a third split
    again = KMeans.load(tmp_path / "val" / "labeling" / "centroids.npz")
    assert np.array_equal(again.centroids, kmeans.centroids)
    assert again.settings["features"] == kmeans.settings["features"]


@pytest.mark.parametrize("change,setting", [
    (["resize.size=96"], "resize.size"),
    (["graph.segment_feature=tokens"], "graph.segment_feature"),
    (["method=kmeans_patches"], "method"),
    (["backbone.pos_antialias=true"], "backbone.pos_antialias"),
])
def test_centroids_of_other_features_are_refused_naming_the_setting(tmp_path, two_splits, change, setting):
    common = [*FOLDER, f"dataset.root={two_splits}", f"paths.cache_dir={tmp_path / 'cache'}"]
    run_discover(tmp_path / "fit", [*common, "dataset.split=train"])
    centroids = tmp_path / "fit" / "labeling" / "centroids.npz"
    with pytest.raises(ValueError, match=rf"labeling\.centroids=.* was fitted on features with {setting}="):
        run_discover(tmp_path / "val", [*common, "dataset.split=val", f"labeling.centroids={centroids}", *change])
    assert not (tmp_path / "val" / "segments").exists()  # refused before any image was read


@pytest.mark.parametrize("change,message", [
    (["k=4"], r"k=4 but labeling\.centroids=.* holds 3 centroids: pass k=3"),
    (["method=wnet"], r"method=wnet does not cluster with k-means centroids"),
    (["labeling.centroids=nothing.npz"], r"labeling\.centroids=nothing\.npz: no such file"),
])
def test_centroids_of_another_k_missing_or_for_a_method_without_centroids_are_refused(tmp_path, two_splits, change,
                                                                                     message):
    from datus.cli.errors import user_error

    common = [*FOLDER, f"dataset.root={two_splits}", f"paths.cache_dir={tmp_path / 'cache'}"]
    run_discover(tmp_path / "fit", [*common, "dataset.split=train"])
    centroids = tmp_path / "fit" / "labeling" / "centroids.npz"
    with pytest.raises(Exception) as info:
        run_discover(tmp_path / "val", [*common, "dataset.split=val", f"labeling.centroids={centroids}", *change])
    assert re.search(message, str(user_error(info.value))), str(info.value)


# ------------------------------------------------------------------------------ the quality command
@pytest.mark.slow
def test_quality_command_runs_a_study_resumes_and_reports(tmp_path, two_splits):
    study = {
        "seeds": [0, 1],
        "baseline": "kmeans_patches",
        "datasets": {
            "val": {"overrides": ["dataset=folder", "dataset.split=val", "dataset.num_classes=3", "k=3"],
                    "fit_on": "train"},
            "train": ["dataset=folder", "dataset.split=train", "dataset.num_classes=3", "k=3"],
        },
        "configurations": {
            "kmeans_patches": ["method=kmeans_patches", "labeling.kmeans.overcluster=1"],
            "defaults": [],
            "defaults_inductive": {"inductive": "defaults"},
            "refined": {"refine": "defaults", "overrides": ["trainer.max_epochs=1", "model.data.batch_size=2"],
                        "seeds": [0], "versus": "defaults"},
            # refined's network scored again by evaluate.py: with train.py's CRF it must give refined's numbers
            "refined_again": {"evaluate": "refined", "overrides": ["postprocess=crf"], "seeds": [0]},
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "quality"
    command = [sys.executable, "-m", "datus.bench", "quality", "--study", str(path), "--out", str(out),
               "backbone=tiny_vit", "resize.size=64", "graph.min_patches=2", f"dataset.root={two_splits}",
               f"paths.cache_dir={tmp_path / 'cache'}"]
    first = subprocess.run([*command, "--seeds", "0"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    seed0 = out / "runs" / "val" / "defaults" / "seed0" / "metrics.json"
    stamp = seed0.stat().st_mtime_ns
    proc = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "5 runs to do (9 finished before)" in proc.stderr  # resumed: only seed 1 ran (refined has seed 0 only)
    assert seed0.stat().st_mtime_ns == stamp
    result = json.loads((out / "quality.json").read_text())
    runs = {(r["configuration"], r["dataset"], r["seed"]): r for r in result["runs"]}
    table = result["table"]
    # 2 configurations x 2 datasets x 2 seeds, the inductive one on val x 2 seeds, refined and refined_again x 2
    # datasets x seed 0
    assert len(runs) == 14
    for (config, dataset, seed), run in runs.items():
        if config == "refined_again":  # nothing trained: the same checkpoint, CRF and masks as refined's
            assert not (out / run["run"] / "checkpoints").exists()
            assert run["miou"] == pytest.approx(runs[("refined", dataset, seed)]["miou"], abs=1e-9)
            assert run["pixel_accuracy"] == pytest.approx(runs[("refined", dataset, seed)]["pixel_accuracy"], abs=1e-9)
        elif config == "refined":
            refined = json.loads((out / run["run"] / "train_summary.json").read_text())["rounds"][-1]
            assert run["miou"] == refined["refined_train_miou"]
        else:
            assert run["miou"] == json.loads((out / run["run"] / "metrics.json").read_text())["miou"]
    trained_on = json.loads((out / "runs" / "val" / "refined" / "seed0" / "train_summary.json").read_text())
    assert trained_on["rounds"][0]["pseudo_masks"] == str(out / "runs" / "val" / "defaults" / "seed0" / "pseudo_masks")
    assert table["refined"]["val"]["miou"]["n"] == 1 and "(1 seed)" in (out / "quality.md").read_text()
    # versus: the paired difference to the row it differs from by one thing (here the refinement), its seeds only
    gain = 100 * (runs[("refined", "val", 0)]["miou"] - runs[("defaults", "val", 0)]["miou"])
    assert table["refined"]["val"]["vs_versus"]["mean"] == pytest.approx(gain) and table["refined"]["val"]["vs_versus"]["n"] == 1
    line = next(r for r in (out / "quality.md").read_text().splitlines() if r.startswith("| refined - defaults |"))
    assert f" {gain:+.1f} ({gain:+.1f} .. {gain:+.1f}; 1) |" in line
    # IoU per class, mean over the seeds: where a mIoU difference comes from (refined rows too)
    per_seed = [json.loads((out / runs[("defaults", "val", s)]["run"] / "metrics.json").read_text())["per_class_iou"]
                for s in (0, 1)]
    for name, value in table["defaults"]["val"]["per_class_iou"].items():
        assert value["mean"] == pytest.approx(100 * np.mean([p[name] for p in per_seed])) and value["n"] == 2
    assert set(table["refined"]["val"]["per_class_iou"]) == set(per_seed[0])
    assert "IoU per class on val in %" in (out / "quality.md").read_text()
    values = [runs[("defaults", "train", s)]["miou"] * 100 for s in (0, 1)]
    assert table["defaults"]["train"]["miou"]["mean"] == pytest.approx(np.mean(values))
    assert table["defaults"]["train"]["miou"]["std"] == pytest.approx(np.std(values, ddof=1))
    diffs = [(runs[("defaults", "val", s)]["miou"] - runs[("kmeans_patches", "val", s)]["miou"]) * 100 for s in (0, 1)]
    assert table["defaults"]["val"]["vs_baseline"]["mean"] == pytest.approx(np.mean(diffs))
    assert table["defaults"]["val"]["vs_baseline"]["min"] == pytest.approx(min(diffs))
    assert "train" not in table["defaults_inductive"]  # inductive rows only where a fit_on split is named
    inductive = json.loads((out / "runs" / "val" / "defaults_inductive" / "seed1" / "summary.json").read_text())
    assert inductive["labeling"]["centroids"] == str(out / "runs" / "train" / "defaults" / "seed1" / "labeling"
                                                     / "centroids.npz")
    markdown = (out / "quality.md").read_text()
    assert "| defaults_inductive | " in markdown and "Paired mIoU difference to `kmeans_patches`" in markdown
    # each seed's wall time, as the command measured it (seed 0 in the first call, seed 1 in the second)
    assert all(run["seconds"] is not None and run["seconds"] >= 0 for run in runs.values())
    timed = [runs[("defaults", "train", s)]["seconds"] for s in (0, 1)]
    assert table["defaults"]["train"]["minutes"]["total"] == pytest.approx(sum(timed) / 60)
    assert table["defaults"]["train"]["minutes"]["first"] == pytest.approx(max(timed) / 60)  # each call's first seed
    assert "Wall minutes as this command measured them" in markdown and "All timed runs:" in markdown
    with Image.open(out / "quality.png") as picture:
        assert picture.size[0] > 500
    # a row whose settings changed and whose rerun fails: its old runs are neither counted nor re-timed
    seconds = (out / "runs" / "train" / "kmeans_patches" / "seconds.json").read_bytes()
    study["configurations"]["kmeans_patches"].append("labeling.kmeans.overcluster=0")
    path.write_text(yaml.safe_dump(study))
    failed = subprocess.run([*command, "--configs", "kmeans_patches", "--datasets", "train"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=1200)
    assert failed.returncode != 0 and "overcluster=0 must be a number" in failed.stderr
    result = json.loads((out / "quality.json").read_text())
    # the narrowed call reports the whole study: the changed row is stale on both datasets, the rest stays
    assert sorted(result["stale"]) == ["kmeans_patches/train", "kmeans_patches/val"] and "kmeans_patches" not in result["table"]
    assert result["table"]["defaults"]["val"]["miou"]["n"] == 2 and result["table"]["refined"]["train"]["miou"]["n"] == 1
    assert (out / "runs" / "train" / "kmeans_patches" / "seconds.json").read_bytes() == seconds
    assert "Left out, made by an earlier command of their row" in (out / "quality.md").read_text()
    # the row's settings restored (its failed rerun replaced nothing), and the study folder moved elsewhere
    # (scratch to home): the records name paths under --out, so every run counts again and none is redone
    study["configurations"]["kmeans_patches"].pop()
    path.write_text(yaml.safe_dump(study))
    moved = tmp_path / "moved" / "quality"
    moved.parent.mkdir()
    shutil.move(out, moved)
    command[command.index("--out") + 1] = str(moved)
    # one network trained again since refined_again scored it (here: its checkpoint touched): that score is redone
    checkpoint = moved / "runs" / "train" / "refined" / "seed0" / "checkpoints" / "last.ckpt"
    rescored = moved / "runs" / "train" / "refined_again" / "seed0" / "metrics.json"
    os.utime(checkpoint, ns=(time.time_ns(), rescored.stat().st_mtime_ns + 10**9))
    again = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 runs to do (13 finished before)" in again.stderr
    assert rescored.stat().st_mtime_ns > checkpoint.stat().st_mtime_ns
    result = json.loads((moved / "quality.json").read_text())
    assert result["stale"] == [] and len(result["runs"]) == 14
    assert all((moved / run["run"] / "pseudo_masks").is_dir() for run in result["runs"] if run["configuration"] != "refined")
    # --report runs nothing and writes the tables from the finished runs (e.g. while another call runs the study)
    (moved / "quality.md").unlink()
    report = subprocess.run([*command, "--report"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "runs to do" not in report.stderr and json.loads((moved / "quality.json").read_text())["table"] == result["table"]
    assert "IoU per class on train" in (moved / "quality.md").read_text()
    # where the data and the cache are is the machine's business: a report naming neither counts every run
    elsewhere = [c for c in command if not c.startswith(("dataset.root=", "paths.cache_dir="))]
    report = subprocess.run([*elsewhere, "--report"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    assert json.loads((moved / "quality.json").read_text())["table"] == result["table"]
    narrowed = subprocess.run([*command, "--report", "--configs", "defaults"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=600)
    assert narrowed.returncode != 0 and "--report writes the tables of the whole study" in narrowed.stderr
    # quality.json is the study's record: in an empty folder (another machine, a cleared scratch) --merge gives
    # the same tables, seconds and per-class IoU included
    record = json.loads((moved / "quality.json").read_text())
    assert record["commit"] and record["dataset_overrides"]["val"] == study["datasets"]["val"]["overrides"]
    (tmp_path / "record.json").write_text(json.dumps(record))
    fresh = [*command[:command.index("--out") + 1], str(tmp_path / "fresh"), *command[command.index("--out") + 2:],
             "--merge", str(tmp_path / "record.json")]
    merged = subprocess.run([*fresh, "--report"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert merged.returncode == 0, merged.stderr[-3000:]
    again = json.loads((tmp_path / "fresh" / "quality.json").read_text())
    assert again["table"] == record["table"] and again["merged"]["files"][0]["runs"] == 14
    assert "14 from `" in (tmp_path / "fresh" / "quality.md").read_text()
    # a run the record lacks runs; what it reads (refined's network, defaults' pseudo masks) runs too, the record
    # holding only their scores; the rest is not run again
    record["runs"] = [r for r in record["runs"] if (r["configuration"], r["dataset"]) != ("refined_again", "train")]
    (tmp_path / "record.json").write_text(json.dumps(record))
    resumed = subprocess.run(fresh, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "3 runs to do (11 finished before)" in resumed.stderr
    again = json.loads((tmp_path / "fresh" / "quality.json").read_text())
    own = {(r["configuration"], r["dataset"]): r for r in again["runs"] if "record" not in r}
    assert sorted(own) == [("defaults", "train"), ("refined", "train"), ("refined_again", "train")]
    assert own[("defaults", "train")]["miou"] == runs[("defaults", "train", 0)]["miou"]  # the same run, made again
    assert own[("refined_again", "train")]["miou"] == pytest.approx(own[("refined", "train")]["miou"], abs=1e-9)
    # a row whose settings changed since the record: its recorded runs are left out, saying why
    study["configurations"]["kmeans_patches"].append("labeling.kmeans.iterations=7")
    path.write_text(yaml.safe_dump(study))
    changed = subprocess.run([*fresh, "--report"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert changed.returncode == 0 and "--merge: left out `kmeans_patches`" in changed.stderr
    assert "kmeans_patches" not in json.loads((tmp_path / "fresh" / "quality.json").read_text())["table"]


def test_the_quality_command_refuses_what_is_not_one_override_before_any_run(tmp_path):
    study = load_study("peers", configurations=["primaps"])
    data = tmp_path / "data"
    for name in ("camvid", "suim"):
        (data / name).mkdir(parents=True)
    for extra, message in ((["primaps_kmeans_start"], "comma-separated lists"),  # `--configs a b` passes b on
                           (["k=3,4"], "sweeps several values"),
                           ([f"paths.data_dir={tmp_path / 'nowhere'}"], r"datasets\.camvid_val: dataset\.root=.* is not a folder"),
                           ([f"paths.data_dir={data}", "graph.louvain.resolutoin=1"], "Could not override 'graph.louvain.resolutoin'")):
        with pytest.raises(StudyError, match=message):  # before any run starts, however many rows come first
            bench_quality(study, tmp_path / "quality", ["paths.cache_dir=/tmp/x", *extra], quiet=True)
    assert not (tmp_path / "quality").exists()
    (tmp_path / "file").touch()
    with pytest.raises(StudyError, match="is a file: name a folder"):
        bench_quality(study, tmp_path / "file", [], quiet=True)
    bad = tmp_path / "study.yaml"
    bad.write_text(yaml.safe_dump({"datasets": {"val": ["dataset=camvid"]},
                                   "configurations": {"mine": ["method=stego", "feature_head stego"]}}))
    with pytest.raises(StudyError, match=r"configurations\.mine: 'feature_head stego' is not a Hydra override"):
        load_study(str(bad))
    # seeds: a seed named twice would run twice into one folder; an empty list would mean the study's
    with pytest.raises(StudyError, match=r"--seeds names seed 1 more than once"):
        load_study("peers", seeds=[1, 0, 1])
    for seeds, where in (("0,1", r"study\.yaml: seeds"), ([], r"study\.yaml: seeds"), ([0, -1], r"study\.yaml: seeds"),
                         ({"own": [0, True]}, r"configurations\.mine\.seeds")):
        own = seeds.pop("own") if isinstance(seeds, dict) else None
        bad.write_text(yaml.safe_dump({"datasets": {"val": ["dataset=camvid"]}, "seeds": [0, 1] if own else seeds,
                                       "configurations": {"mine": {"overrides": [], "seeds": own} if own else []}}))
        with pytest.raises(StudyError, match=f"{where} must be a non-empty list of whole numbers >= 0"):
            load_study(str(bad))
    # an evaluate row scores a network a refine row trained: of any other row there is no checkpoint to score
    for rows, message in (({"mine": {"evaluate": "plain"}}, r"configurations\.mine evaluates the network 'plain' trained"),
                          ({"mine": {"evaluate": "trained", "refine": "plain"}}, "not refine and evaluate"),
                          ({"mine": {"overrides": [], "versus": "mine"}}, r"mine\.versus='mine' names no other"),
                          ({"mine": {"overrides": [], "versus": "other"}}, r"mine\.versus='other' names no other"),
                          ({"mine": {"overrides": [], "label": 3}}, r"configurations\.mine\.label must be words"),
                          ({"mine": {"evaluate": "trained"}, "trained": {"refine": "plain", "overrides": ["rounds=2"]}},
                           "trains several rounds")):
        bad.write_text(yaml.safe_dump({"datasets": {"val": ["dataset=camvid", "dataset.split=val"]},
                                       "configurations": {"plain": [], "trained": {"refine": "plain"}, **rows}}))
        with pytest.raises(StudyError, match=message):
            load_study(str(bad))
    for option in ("--seeds", "--configs", "--datasets"):  # `--configs ""` would otherwise run every row
        empty = subprocess.run([sys.executable, "-m", "datus.bench", "quality", "--study", "peers", option, "0,"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True)
        assert empty.returncode != 0 and f"error: {option} '0,': comma-separated, none empty" in empty.stderr


def _close(a, b) -> bool:
    """Nested dicts and lists equal, their floats to 1e-9 relative."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-9)
    return a == b


def test_the_peers_record_in_the_repository_gives_its_own_tables_back(tmp_path):
    """experiments/results/quality_peers/quality.json, merged into an empty folder, reproduces its tables for
    every row the study still defines as it did (what a session on a fresh machine resumes from)."""
    from datus.bench.quality import collect, load_records, plan

    path = PROJECT_ROOT / "experiments" / "results" / "quality_peers" / "quality.json"
    record = json.loads(path.read_text())
    study = load_study("peers")
    records = load_records([path], study, [])
    cells = plan(study, tmp_path, [])
    records.attach(cells)
    table = collect(study, cells)["table"]
    same = [name for name in record["table"] if name in table]
    assert len(same) >= 8 and len(records.left_out) == len(record["table"]) - len(same)
    for name in same:
        for dataset, entry in record["table"][name].items():
            mine = table[name][dataset]
            for key in ("seeds", "miou", "pixel_accuracy", "vs_baseline", "vs_versus", "per_class_iou", "minutes"):
                assert _close(mine.get(key), entry.get(key)), (name, dataset, key, mine.get(key), entry.get(key))
    # a record written from merged runs (the next session's) gives the same tables again
    again = collect(study, cells)
    (tmp_path / "again.json").write_text(json.dumps(again))
    cells_again = plan(study, tmp_path / "empty", [])
    load_records([tmp_path / "again.json"], study, []).attach(cells_again)
    assert _close(collect(study, cells_again)["table"], again["table"])
    # the summary by the rows' labels (the README's table): mean ± std (seeds; paired difference to versus),
    # the best of each column in bold
    from datus.bench.quality import to_markdown

    markdown = to_markdown(collect(study, cells)).splitlines()
    entry = table["stego_crf"]["camvid_val"]
    m, versus = entry["miou"], entry["vs_versus"]["mean"]
    line = next(r for r in markdown if r.startswith("| STEGO with its CRF |"))
    assert line.split(" | ")[1] == f"{m['mean']:.1f} ± {m['std']:.1f} ({m['n']}; {versus:+.1f})"
    for column, dataset in enumerate(study.datasets, start=1):
        best = max(table[n][dataset]["miou"]["mean"] for n in table if dataset in table[n])
        bold = [r.split(" | ")[column] for r in markdown if r.startswith("| ") and " ± " in r and "**" in
                r.split(" | ")[column]]
        assert bold and all(b.startswith(f"**{best:.1f}") for b in bold), (dataset, bold)
    with pytest.raises(StudyError, match="not a quality.json of this command"):
        (tmp_path / "other.json").write_text(json.dumps({"runs": {}}))
        load_records([tmp_path / "other.json"], study, [])
    elsewhere = load_records([path], study, ["backbone=dino_vits8"])
    if "extra" in record:  # a record of runs made with other overrides for every run gives none of them
        assert not elsewhere.runs and "backbone=dino_vits8" in elsewhere.left_out[0]


# ------------------------------------------------------------------------------ clustering that does not depend on luck
def test_an_ensemble_vote_finds_the_partition_that_unlucky_seeds_miss():
    """A big class and three small ones: k-means (3 restarts) splits the big class and merges two small
    ones for about a third of its seeds; ten runs voting find the four classes for every seed."""
    rng = np.random.default_rng(0)
    points, truth = [], []
    for label, (direction, count) in enumerate([((1, 0, 0, 0), 3000), ((0, 1, 0, 0), 300), ((0, 0, 1, 0), 300),
                                                ((0, 0, 0, 1), 300)]):
        points.append(np.asarray(direction, dtype=float) + rng.normal(0, 0.15, size=(count, 4)))
        truth += [label] * count
    x, truth = np.concatenate(points).astype(np.float32), np.array(truth)

    def pure(labels):  # every class has its own label and no label spans two classes
        return len(set(labels)) == 4 and all(len(set(labels[truth == c])) == 1 for c in range(4))

    seeds = range(12)
    plain = [pure(KMeans(4, seed=s, center=False, overcluster=1).fit(x).predict(x)) for s in seeds]
    assert 2 <= plain.count(False) <= 10  # seed-dependent: right for some seeds, wrong for others
    voted = [KMeans(4, seed=s, center=False, overcluster=1, ensemble=10).fit(x) for s in seeds]
    assert all(pure(km.predict(x)) for km in voted)
    assert all(len(km.agreement) == 10 and max(km.agreement) == 1.0 for km in voted)
    with pytest.raises(ValueError, match=r"labeling\.kmeans\.ensemble=0 must be a whole number >= 1"):
        KMeans(4, ensemble=0)
