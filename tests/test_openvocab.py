"""Open vocabulary (method=clip_sam): CLIP's tokenizer and the ONNX model files, on tiny exports."""

from __future__ import annotations

import numpy as np
import pytest

from datus.openvocab import (
    ClipImageEncoder,
    ClipTextEncoder,
    ClipTokenizer,
    ModelFileError,
    SamImageEncoder,
    SamPromptDecoder,
    prompts,
)
from tests.openvocab_models import DIM, build_all


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return build_all(tmp_path_factory.mktemp("onnx"))


def test_the_tokenizer_gives_the_published_clip_ids():
    # the published example of CLIP's tokenizer (instant-clip-tokenizer's docs, OpenAI-compatible):
    # "Hi there" -> [49406, 1883, 997, 49407]
    ids = ClipTokenizer()(["Hi there", "a photo of a cat."])
    assert ids.shape == (2, 77) and ids.dtype == np.int64
    assert ids[0, :5].tolist() == [49406, 1883, 997, 49407, 0] and not ids[0, 4:].any()
    assert ids[1, 0] == 49406 and 49407 in ids[1]


def test_a_prompt_longer_than_77_tokens_is_cut_with_the_end_token_kept():
    ids = ClipTokenizer()(["a photo of a " + "very " * 200 + "long car."])[0]
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407 and (ids != 0).all()


def test_prompts_fill_each_template_with_each_class_name():
    assert prompts(["traffic_light", "car"], ["a photo of a {name}.", "a {name} on the road."]) == [
        ["a photo of a traffic light.", "a traffic light on the road."], ["a photo of a car.", "a car on the road."]]
    with pytest.raises(ValueError, match=r"has no \{name\}"):
        prompts(["car"], ["a photo"])
    with pytest.raises(ValueError, match="no class names"):
        prompts([], ["a {name}"])


def test_the_model_files_run_with_the_real_exports_signatures(model_files):
    crops = [np.zeros((30, 50, 3), np.uint8), np.full((300, 100, 3), 200, np.uint8)]
    image = ClipImageEncoder(model_files["clip_image"]).encode(crops)
    text = ClipTextEncoder(model_files["clip_text"]).encode(ClipTokenizer()(["a photo of a car."]))
    assert image.shape == (2, DIM) and text.shape == (1, DIM)
    assert np.allclose(np.linalg.norm(image, axis=1), 1) and np.allclose(np.linalg.norm(text, axis=1), 1)
    embedding, scale = SamImageEncoder(model_files["sam_encoder"]).encode(np.zeros((360, 480, 3), np.uint8))
    assert embedding.shape == (1, 256, 64, 64) and scale == pytest.approx(1024 / 480)
    masks, iou = SamPromptDecoder(model_files["sam_decoder"]).decode(embedding, np.array([[100.0, 100.0]]), (360, 480))
    assert masks.shape == (1, 3, 360, 480) and iou.shape == (1, 3)


def test_a_missing_or_wrong_model_file_is_named_with_how_to_get_it(model_files, tmp_path):
    with pytest.raises(ModelFileError, match=r"method.clip_image=.*nowhere.onnx: no such file .*docs/open_vocabulary.md"):
        ClipImageEncoder(tmp_path / "nowhere.onnx")
    with pytest.raises(ModelFileError, match=r"method.sam_decoder is not set"):
        SamPromptDecoder(None)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelFileError, match=r"junk.onnx: not an ONNX model onnxruntime can run"):
        ClipTextEncoder(tmp_path / "junk.onnx")
    with pytest.raises(ModelFileError, match=r"is not a SAM prompt decoder.*expected input image_embeddings"):
        SamPromptDecoder(model_files["clip_image"], setting="method.sam_decoder")
    with pytest.raises(ModelFileError, match=r"is not a CLIP text encoder: expected input #0 of rank 2"):
        ClipTextEncoder(model_files["sam_encoder"])


def _proposal(mask, iou, point=(0.0, 0.0)):
    from datus.openvocab.automatic import MaskProposal

    return MaskProposal(np.asarray(mask, dtype=bool), iou, 1.0, point)


def test_the_point_grid_and_the_stability_score():
    from datus.openvocab.automatic import point_grid, stability_score

    grid = point_grid(2, 100, 200)
    assert grid.tolist() == [[50, 25], [150, 25], [50, 75], [150, 75]]
    logits = np.array([[3.0, 0.5, -0.5, -3.0]])
    assert stability_score(logits, 0.0, 1.0) == pytest.approx(1 / 3)  # > 1: one pixel; > -1: three
    with pytest.raises(ValueError, match="points_per_side=0"):
        point_grid(0, 10, 10)


def test_duplicate_masks_are_dropped_best_predicted_iou_first_and_overlaps_go_to_the_best():
    from datus.openvocab.automatic import deduplicate, paint

    a = np.zeros((10, 10), bool)
    a[:5, :5] = True  # 25 px
    b = a.copy()
    b[5, :5] = True  # 30 px, IoU with a 25/30 > 0.7: a duplicate
    c = np.zeros((10, 10), bool)
    c[3:8, 3:8] = True  # overlaps a on 4 px: IoU 4/46, kept
    kept = deduplicate([_proposal(a, 0.90), _proposal(b, 0.95), _proposal(c, 0.92)], iou=0.7)
    assert [p.predicted_iou for p in kept] == [0.95, 0.92]  # b beat its duplicate a; c stays
    owner = paint(kept, (10, 10))
    assert owner[4, 4] == 0 and owner[6, 6] == 1 and owner[9, 9] == -1  # the overlap belongs to b (0.95)


def test_automatic_masks_keep_only_confident_stable_distinct_masks(model_files):
    from datus.data import DemoImages
    from datus.openvocab.automatic import AutomaticMasks, mask_iou

    image = DemoImages().load(0)["image"].permute(1, 2, 0).numpy()
    generator = AutomaticMasks(SamImageEncoder(model_files["sam_encoder"]), SamPromptDecoder(model_files["sam_decoder"]),
                               points_per_side=4, pred_iou_thresh=0.85, stability_thresh=0.5, dedupe_iou=0.7)
    proposals = generator(image)
    assert proposals and all(p.predicted_iou >= 0.85 and p.stability >= 0.5 for p in proposals)
    # the tiny decoder's predicted IoU falls with x: only the left column of the 4x4 grid passes 0.85
    assert {p.point[0] for p in proposals} == {image.shape[1] / 8}
    for i, p in enumerate(proposals):
        assert p.mask.shape == image.shape[:2]
        assert all(mask_iou(p.mask, q.mask) <= 0.7 for q in proposals[i + 1:])


def test_clip_names_each_mask_and_leaves_uncovered_or_unsure_pixels_unlabelled(model_files):
    from datus.data import DemoImages
    from datus.openvocab.automatic import AutomaticMasks
    from datus.openvocab.naming import ClipNamer, mask_crop

    image = DemoImages().load(1)["image"].permute(1, 2, 0).numpy()
    proposals = AutomaticMasks(SamImageEncoder(model_files["sam_encoder"]), SamPromptDecoder(model_files["sam_decoder"]),
                               points_per_side=3, pred_iou_thresh=0.5, stability_thresh=0.5)(image)
    encoders = ClipImageEncoder(model_files["clip_image"]), ClipTextEncoder(model_files["clip_text"])
    namer = ClipNamer(*encoders, ["sky", "road", "car"], templates=["a photo of a {name}.", "a {name}."])
    labels, probs = namer(image, proposals)
    covered = np.zeros(image.shape[:2], bool)
    for p in proposals:
        covered |= p.mask
    assert probs.shape == (len(proposals), 3) and np.allclose(probs.sum(axis=1), 1)
    assert set(np.unique(labels[covered])) <= {0, 1, 2} and (labels[~covered] == 255).all()
    assert namer.text_embeddings.shape == (3, DIM)
    unsure, _ = ClipNamer(*encoders, ["sky", "road", "car"], min_confidence=1.0)(image, proposals)
    assert (unsure == 255).all()
    crop = mask_crop(image, proposals[0].mask)
    assert crop.ndim == 3 and crop.shape[0] <= image.shape[0]


def _folder(root, split="val", photos=range(3)):
    """Real photos with 3-class masks (dark / mid / bright) named like a user's dataset."""
    from PIL import Image

    from datus.data import DemoImages

    (root / split / "images").mkdir(parents=True)
    (root / split / "true_masks").mkdir()
    for i in photos:
        image = DemoImages().load(i)["image"].permute(1, 2, 0).numpy()[::2, ::2]
        Image.fromarray(np.ascontiguousarray(image)).save(root / split / "images" / f"img{i}.png")
        truth = (image.mean(axis=2) // 86).astype(np.uint8)
        Image.fromarray(truth).save(root / split / "true_masks" / f"img{i}.png")
    return ["dataset=folder", f"dataset.root={root}", "dataset.split=val", "dataset.num_classes=3",
            "dataset.class_names=[dark_thing,grey_thing,bright_thing]"]


def _run(out, overrides):
    from tests.conftest import run_discover

    return run_discover(out, overrides)


@pytest.mark.slow
def test_method_clip_sam_runs_end_to_end_on_the_tiny_models_and_resumes(model_files, tmp_path):
    import json

    from datus.masks import read_mask

    data = _folder(tmp_path / "data")
    files = [f"method.{name}={path}" for name, path in model_files.items()]
    overrides = [*data, "method=clip_sam", "k=3", "matching=identity", *files, "method.sam.points_per_side=3",
                 "method.sam.pred_iou_thresh=0.5", "method.sam.stability_thresh=0.5", f"cache_dir={tmp_path / 'c'}"]
    miou = _run(tmp_path / "run", overrides)
    out = tmp_path / "run"
    from datus.data import DemoImages

    for i in range(3):
        mask = read_mask(out / "pseudo_masks" / f"img{i}.png")
        assert mask.shape == DemoImages().load(i)["image"][:, ::2, ::2].shape[1:] and set(np.unique(mask)) <= {0, 1, 2, 255}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["matching"]["method"] == "identity" and metrics["miou"] == miou
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backbone"] is None  # no backbone was built
    assert summary["clip_sam"]["labelled_this_run"] == 3 and summary["class_names"] == ["dark_thing", "grey_thing",
                                                                                        "bright_thing"]
    with np.load(out / "labeling" / "text_embeddings.npz") as z:
        assert z["text_embeddings"].shape == (3, DIM)
    _run(tmp_path / "again", overrides)  # the labels come from the cache
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["clip_sam"]["labelled_this_run"] == 0


@pytest.mark.slow
def test_with_only_the_sam_files_the_masks_are_named_by_kmeans_clusters(model_files, tmp_path):
    import json

    from datus.masks import read_mask

    data = _folder(tmp_path / "data")
    files = [f"method.sam_encoder={model_files['sam_encoder']}", f"method.sam_decoder={model_files['sam_decoder']}"]
    _run(tmp_path / "run", [*data, "method=clip_sam", "k=3", *files, "method.sam.points_per_side=4",
                            "method.sam.pred_iou_thresh=0.5", "method.sam.stability_thresh=0.5", "backbone=tiny_vit",
                            "backbone.weights=random", "resize.size=64", f"cache_dir={tmp_path / 'c'}"])
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backbone"] == "tiny_vit" and summary["labeling"]["mode"] == "sam only"
    assert json.loads((out / "metrics.json").read_text())["matching"]["method"] == "hungarian"
    seen = set()
    for i in range(3):
        seen |= set(np.unique(read_mask(out / "pseudo_masks" / f"img{i}.png")).tolist())
    assert seen - {255} <= {0, 1, 2} and len(seen - {255}) >= 2
    assert (out / "labeling" / "centroids.npz").is_file()


@pytest.mark.parametrize(("extra", "message"), [
    ([], r"method=clip_sam needs CLIP and SAM as ONNX files .* use method=datus"),
    (["method.clip_image={missing}", "method.clip_text={missing}", "method.sam_encoder={missing}",
      "method.sam_decoder={missing}"], r"method.clip_image=.*nowhere.onnx: no such file"),
    (["method.templates=[a photo]"], r"prompt template 'a photo' has no \{name\}"),
])
def test_clip_sam_without_its_files_fails_before_any_work(tmp_path, extra, message):
    import re

    from tests.test_bad_input import _messages

    data = _folder(tmp_path / "data")
    with pytest.raises(Exception) as info:
        _run(tmp_path / "out", [*data, "method=clip_sam", "k=3", *[e.format(missing=tmp_path / "nowhere.onnx")
                                                                   for e in extra]])
    assert re.search(message, _messages(info.value)), _messages(info.value)


@pytest.mark.slow
def test_the_alignment_module_learns_the_clip_sam_labels_on_frozen_features_and_segments_new_names(
        model_files, tmp_path):
    """method=clip_sam on train, then train.py model=align_text (CLIP's text embeddings as fixed prototypes,
    frozen tiny-ViT features), validated on val with identity matching; then any other list of names."""
    import torch
    from hydra.core.global_hydra import GlobalHydra

    from datus.cli.train import refine_from_config
    from datus.masks import read_mask
    from datus.refine import load_refiner
    from tests.conftest import compose_config

    data = _folder(tmp_path / "data", "train", range(3))
    _folder(tmp_path / "data", "val", range(3, 5))
    files = [f"method.{name}={path}" for name, path in model_files.items()]
    _run(tmp_path / "run", [*[d.replace("dataset.split=val", "dataset.split=train") for d in data], "method=clip_sam",
                            "k=3", "matching=identity", *files, "method.sam.points_per_side=3",
                            "method.sam.pred_iou_thresh=0.5", "method.sam.stability_thresh=0.5",
                            f"cache_dir={tmp_path / 'c'}"])
    overrides = [d for d in data if not d.startswith("dataset.split")] + [
        "model=align_text", f"pseudo_masks={tmp_path / 'run' / 'pseudo_masks'}", "backbone=tiny_vit",
        "backbone.weights=random", "resize.size=64", "logger=none", "trainer.enable_progress_bar=false",
        "model.data.batch_size=2", "batch_size=2", "model.head.heads=6", "trainer.max_epochs=2", "predict=true",
        "postprocess=none", f"cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'train'}"]
    try:
        history = refine_from_config(compose_config("train", overrides, tmp_path / "train"), loggers=[])
    finally:
        GlobalHydra.instance().clear()
    entry = history[-1]
    assert 0 <= entry["best_val_miou"] <= 1
    module = load_refiner(entry["best_checkpoint"])
    assert module.hparams.matching == "identity" and not module.head.prototypes.requires_grad
    with np.load(tmp_path / "run" / "labeling" / "text_embeddings.npz") as z:
        assert torch.allclose(module.head.prototypes, torch.from_numpy(z["text_embeddings"]))
    for path in sorted((tmp_path / "train" / "refined" / "pseudo_masks").glob("*.png")):
        assert read_mask(path).max() < 3
    # zero-shot: two other names, embedded by the same CLIP text encoder, without retraining
    from datus.openvocab import ClipTextEncoder, ClipTokenizer

    text = ClipTextEncoder(model_files["clip_text"]).encode(ClipTokenizer()(["a photo of a tree.", "a photo of a road."]))
    module.head.set_prototypes(torch.from_numpy(text))
    logits = module.head.eval()(torch.randn(1, module.in_dim, 4, 5))
    assert logits.shape == (1, 2, 4, 5)
    import json

    from tests.test_bad_input import _load_entry_point

    # evaluate.py scores the checkpoint as it was validated (identity) unless told otherwise; it used
    # to apply the Hungarian matching silently (a different number from the validation's)
    for matching, expected in ((None, "identity"), ("hungarian", "hungarian")):
        out = tmp_path / f"eval_{matching}"
        cfg = compose_config("evaluate", [*[d for d in data if not d.startswith("dataset.split")], "dataset.split=val",
                                          f"ckpt={entry['best_checkpoint']}", "logger=none", "postprocess=none",
                                          f"cache_dir={tmp_path / 'c'}", "trainer.enable_progress_bar=false",
                                          *([f"matching={matching}"] if matching else [])], out)
        try:
            _load_entry_point("evaluate").main(cfg)
        finally:
            GlobalHydra.instance().clear()
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["matching"]["method"] == expected
        if matching is None:
            assert metrics["miou"] == pytest.approx(entry["best_val_miou"], abs=1e-5)
    # and from the command line: evaluate.py segments val with three other names, scored by identity
    out = tmp_path / "zero_shot"
    cfg = compose_config("evaluate", [*[d for d in data if not d.startswith("dataset.split")], "dataset.split=val",
                                      f"ckpt={entry['best_checkpoint']}", "matching=identity", "logger=none",
                                      "zero_shot.names=[shadow,stone,light]",
                                      f"zero_shot.clip_text={model_files['clip_text']}", f"cache_dir={tmp_path / 'c'}",
                                      "trainer.enable_progress_bar=false"], out)
    try:
        _load_entry_point("evaluate").main(cfg)
    finally:
        GlobalHydra.instance().clear()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["matching"]["method"] == "identity" and metrics["num_clusters"] == 3
    assert len(list((out / "pseudo_masks").glob("*.png"))) == 2


def test_zero_shot_names_without_an_open_vocabulary_checkpoint_are_refused(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from datus.evaluation import EvaluationError
    from tests.conftest import compose_config
    from tests.test_bad_input import _load_entry_point

    data = _folder(tmp_path / "data")
    cfg = compose_config("evaluate", [*data, f"masks={tmp_path}", "logger=none", "zero_shot.names=[a,b,c]"],
                         tmp_path / "out")
    try:
        with pytest.raises(EvaluationError, match=r"zero_shot.names .* model=align_text checkpoint: pass ckpt="):
            _load_entry_point("evaluate").main(cfg)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("reader", ["open_vocabulary", "wnet_bank"])
def test_an_unreadable_image_is_skipped_by_name_but_a_bad_mask_stops_the_run(tmp_path, reader):
    """The open-vocabulary stage and W-Net's image bank go on past an image they cannot read, and
    stop on a bad ground-truth mask: skipping it would change what is evaluated, and finding out at
    evaluation would come after SAM or W-Net had run on the whole split."""
    from datus.data import ImageFolder, MaskError
    from datus.openvocab.stage import _images
    from datus.wnet.data import ImageBank

    _folder(tmp_path / "data", photos=range(4))
    dataset = ImageFolder(root=tmp_path / "data", split="val", num_classes=3)  # masks checked: all good
    (tmp_path / "data" / "val" / "images" / "img1.png").write_bytes(b"not a png")  # then the files change

    def read(indices):
        if reader == "open_vocabulary":
            skipped = []
            stems = [sample.stem for sample, _, _ in _images(dataset, indices, "reading", skipped)]
            return stems, skipped
        bank = ImageBank.build(dataset, tmp_path / f"bank{len(indices)}", (32, 32))
        return bank.stems, bank.skipped

    stems, skipped = read([0, 1, 2, 3])
    assert stems == ["img0", "img2", "img3"]
    assert [s["stem"] for s in skipped] == ["img1"] and "img1.png" in skipped[0]["error"]
    (tmp_path / "data" / "val" / "true_masks" / "img2.png").write_bytes(b"truncated")
    with pytest.raises(MaskError, match=r"img2\.png"):
        read([0, 2, 3])
