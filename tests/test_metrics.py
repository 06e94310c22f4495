"""The metric on hand-computed confusion matrices (numbers worked out by hand in comments)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datus.metrics import ClusterConfusion, evaluate_confusion

U = 255


def _metric(preds, target, k, names=("a", "b"), protocol="honest"):
    m = ClusterConfusion(num_clusters=k, class_names=list(names), protocol=protocol)
    m.update(torch.tensor(preds), torch.tensor(target))
    return m.compute()


def test_permuted_perfect_prediction_scores_one():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(4, 32, 32))
    perm = np.array([3, 0, 4, 1, 2])
    r = _metric(perm[target], target, 5, names="abcde")
    assert r["miou"] == 1.0 and r["pixel_accuracy"] == 1.0 and r["mean_f1"] == 1.0
    assert r["coverage"] == 1.0
    assert r["matching"]["cluster_to_class"] == {str(perm[c]): "abcde"[c] for c in range(5)}


def test_known_partial_case():
    # clusters: c0 = {3 px of b... } see: target a a a a b b b b, pred 1 1 1 0 0 0 0 0
    # confusion c0: a1 b4; c1: a3 b0 -> Hungarian c0->b, c1->a
    # a: tp 3, predicted 3, actual 4 -> IoU 3/4; b: tp 4, predicted 5, actual 4 -> IoU 4/5
    r = _metric([1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1], 2)
    assert r["matching"]["cluster_to_class"] == {"0": "b", "1": "a"}
    assert r["per_class_iou"] == pytest.approx({"a": 0.75, "b": 0.8})
    assert r["miou"] == pytest.approx(0.775)
    assert r["pixel_accuracy"] == pytest.approx(7 / 8)
    # F1: a P=1 R=3/4 -> 6/7; b P=4/5 R=1 -> 8/9
    assert r["mean_f1"] == pytest.approx((6 / 7 + 8 / 9) / 2)
    assert r["per_class_precision"] == pytest.approx({"a": 1.0, "b": 0.8})
    assert r["per_class_recall"] == pytest.approx({"a": 0.75, "b": 1.0})


def test_unlabelled_predictions_count_as_wrong_and_the_paper_protocol_drops_them():
    r = _metric([0, U, 1, 1], [0, 0, 1, 1], 2, protocol="paper")
    assert r["coverage"] == 0.75
    assert r["per_class_iou"] == pytest.approx({"a": 0.5, "b": 1.0})
    assert r["miou"] == pytest.approx(0.75) and r["pixel_accuracy"] == pytest.approx(0.75)
    assert r["paper"]["miou"] == 1.0 and r["paper"]["pixel_accuracy"] == 1.0
    assert "not comparable" in r["paper"]["protocol"] and r["protocol"].startswith("honest")


def test_more_clusters_than_classes_unmatched_clusters_are_wrong_majority_reported_apart():
    # confusion c0: a2; c1: b3; c2: a1 -> Hungarian leaves c2 unmatched (wrong)
    r = _metric([0, 0, 2, 1, 1, 1], [0, 0, 0, 1, 1, 1], 3)
    assert r["matching"]["cluster_to_class"] == {"0": "a", "1": "b", "2": None}
    assert r["per_class_iou"] == pytest.approx({"a": 2 / 3, "b": 1.0})
    assert r["pixel_accuracy"] == pytest.approx(5 / 6)
    assert r["majority"]["matching"]["method"].startswith("majority")
    assert r["majority"]["matching"]["cluster_to_class"] == {"0": "a", "1": "b", "2": "a"}
    assert r["majority"]["miou"] == 1.0


def test_classes_absent_from_the_ground_truth():
    # no pixel of c anywhere: its IoU is undefined and left out of the mean ...
    r = _metric([0, 0, 1, 1], [0, 0, 1, 1], 3, names="abc")
    assert r["per_class_iou"]["c"] is None and r["miou"] == 1.0
    # ... unless a cluster matched to it predicts pixels: then it is 0 and counts
    # confusion c0: a2, c1: b2, c2: a1 -> c2 -> c (no better use); c: predicted 1, actual 0 -> 0
    r = _metric([0, 0, 2, 1, 1], [0, 0, 0, 1, 1], 3, names="abc")
    assert r["per_class_iou"] == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 0.0})
    assert r["miou"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_all_unlabelled_predictions_score_zero():
    r = _metric([U] * 6, [0, 0, 0, 1, 1, 1], 2, protocol="paper")
    assert r["miou"] == 0.0 and r["pixel_accuracy"] == 0.0 and r["coverage"] == 0.0
    assert r["paper"]["pixel_accuracy"] == 0.0


def test_void_ground_truth_is_ignored_and_nothing_else():
    r = _metric([0, 1, 1, U, 0], [0, U, U, U, 0], 2)
    assert r["labelled_pixels"] == 2 and r["pixel_accuracy"] == 1.0


def test_accumulates_over_batches_like_one_big_batch():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 4, size=(6, 20, 20))
    target[rng.random(target.shape) < 0.1] = U
    preds = np.where(rng.random(target.shape) < 0.7, (target + 1) % 4, rng.integers(0, 6, size=target.shape))
    preds[rng.random(target.shape) < 0.05] = U
    whole = ClusterConfusion(6, list("abcd"))
    whole.update(torch.tensor(preds), torch.tensor(target))
    parts = ClusterConfusion(6, list("abcd"))
    for p, t in zip(preds, target):
        parts.update(torch.tensor(p), torch.tensor(t))
    assert torch.equal(whole.confusion, parts.confusion)
    a, b = whole.compute(), parts.compute()
    assert a["miou"] == b["miou"] and 0 < a["miou"] < 1
    assert np.array(a["confusion_matrix"]).sum() == (target != U).sum()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="outside"):
        _metric([0, 5], [0, 1], 2)
    with pytest.raises(ValueError, match="shape"):
        ClusterConfusion(2, ["a", "b"]).update(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="protocol"):
        evaluate_confusion(np.zeros((3, 2)), ["a", "b"], protocol="best")


def test_identity_matching_takes_the_predicted_index_as_the_class():
    # the same pixels as the known partial case, but an open-vocabulary method named the classes:
    # pred 1 1 1 0 0 0 0 0 vs truth a a a a b b b b, identity: 0 = a, 1 = b (nothing swapped after the fact)
    # a: tp 1 (the fourth pixel), predicted 5, actual 4 -> IoU 1/8; b: tp 0 (its pixels were called a) -> 0
    # mIoU 1/16, pixel accuracy 1/8; with the Hungarian matching the same masks score 0.775
    m = ClusterConfusion(num_clusters=2, class_names=["a", "b"], matching="identity")
    m.update(torch.tensor([1, 1, 1, 0, 0, 0, 0, 0]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    r = m.compute()
    assert r["matching"] == {"method": "identity", "cluster_to_class": {"0": "a", "1": "b"}}
    assert r["per_class_iou"] == pytest.approx({"a": 1 / 8, "b": 0.0})
    assert r["miou"] == pytest.approx(1 / 16) and r["pixel_accuracy"] == pytest.approx(1 / 8)
    # a hand-computed 3-class case with an unlabelled pixel and a prediction beyond the classes:
    # truth  a a a b b c c c ; pred a a b b U c c 3
    # a: tp 2, pred 2, actual 3 -> 2/3; b: tp 1, pred 2 (a pixel of a, one of b), actual 2 -> 1/3;
    # c: tp 2, pred 2, actual 3 -> 2/3; the U and the 3 count as wrong; pixel accuracy 5/8
    m = ClusterConfusion(num_clusters=4, class_names=["a", "b", "c"], matching="identity")
    m.update(torch.tensor([0, 0, 1, 1, U, 2, 2, 3]), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]))
    r = m.compute()
    assert r["per_class_iou"] == pytest.approx({"a": 2 / 3, "b": 1 / 3, "c": 2 / 3})
    assert r["pixel_accuracy"] == pytest.approx(5 / 8)
    assert r["matching"]["cluster_to_class"]["3"] is None and "majority" not in r


def test_an_unknown_matching_is_refused():
    with pytest.raises(ValueError, match=r"matching='greedy': choose one of hungarian, identity"):
        ClusterConfusion(num_clusters=2, class_names=["a", "b"], matching="greedy")
