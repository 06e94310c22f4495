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
    with pytest.raises(ModelFileError, match=r"method.clip_image=.*nowhere.onnx: no such file .*README"):
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
