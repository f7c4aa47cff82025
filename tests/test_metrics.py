"""The seven metrics: scikit-learn parity, hand-derived AUPRO cases, the streaming histogram."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from mambaad.metrics import (ALL_KEYS, AnomalyMetrics, PixelHistogram, aupro, average_precision, auroc,
                             binary_curve, compute_metrics, f1_max, image_metrics)


def sk_f1max(labels, scores) -> float:
    p, r, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.nanmax(2 * p * r / (p + r)))


def random_maps(seed: int, n: int = 12, size: int = 48):
    """Maps with rectangular defects of random size in half the images, defects scored higher."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n // 2):
        for _ in range(int(rng.integers(1, 3))):
            r, c = rng.integers(0, size - 12, 2)
            masks[i, r:r + rng.integers(1, 12), c:c + rng.integers(1, 12)] = True
    maps = rng.gamma(2.0, 0.1, masks.shape) + masks * rng.random(masks.shape) * 0.6
    return maps, masks


def brute_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """Threshold by threshold, straight from the definition (slow; small inputs only)."""
    regions = []
    for a, m in zip(maps, masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [a[lab == k] for k in range(1, n + 1)]
    normal = maps[~masks]
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        xs.append(float(np.mean(normal >= t)))
        ys.append(float(np.mean([np.mean(r >= t) for r in regions])))
    xs, ys = np.array(xs), np.array(ys)
    keep = xs <= max_fpr
    x, y = list(xs[keep]), list(ys[keep])
    if x[-1] < max_fpr:
        j = int(np.argmax(xs > max_fpr))
        x.append(max_fpr)
        y.append(ys[j - 1] + (ys[j] - ys[j - 1]) * (max_fpr - xs[j - 1]) / (xs[j] - xs[j - 1]))
    area = sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))
    return area / max_fpr


# ----------------------------------------------------------------------------- scikit-learn parity
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_image_metrics_match_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.35
    scores = rng.normal(size=300) + 0.8 * labels
    if ties:
        scores = np.round(scores, 1)  # many tied scores
    got = image_metrics(scores, labels.astype(int))
    assert got["i_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["i_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert got["i_f1max"] == pytest.approx(sk_f1max(labels, scores), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_pixel_metrics_match_sklearn(seed):
    maps, masks = random_maps(seed)
    scores, labels = maps.reshape(len(maps), -1).max(1), masks.reshape(len(maps), -1).any(1)
    got = compute_metrics(torch.from_numpy(scores), torch.from_numpy(labels).int(),
                          torch.from_numpy(maps).float(), torch.from_numpy(masks).float())
    assert set(got) == set(ALL_KEYS)
    p, m = maps.astype(np.float32).ravel(), masks.ravel()
    assert got["p_auroc"] == pytest.approx(roc_auc_score(m, p), abs=1e-12)
    assert got["p_ap"] == pytest.approx(average_precision_score(m, p), abs=1e-12)
    assert got["p_f1max"] == pytest.approx(sk_f1max(m, p), abs=1e-12)
    assert got["mad"] == pytest.approx(np.mean([got[k] for k in ALL_KEYS[:-1]]))
    assert all(0.0 <= v <= 1.0 for v in got.values())


def test_f1max_threshold_is_the_best_cut():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2])
    labels = np.array([0, 0, 1, 1, 1, 0])
    f1, t = f1_max(binary_curve(scores, labels))
    pred = scores >= t
    tp = np.sum(pred & (labels == 1))
    assert f1 == pytest.approx(2 * tp / (pred.sum() + labels.sum()))
    assert f1 == pytest.approx(sk_f1max(labels, scores))
    assert (t, f1) == (0.35, pytest.approx(6 / 7))  # cut at 0.35: TP 3, FP 1, FN 0


# ----------------------------------------------------------------------------- AUPRO by hand
def single_region_case(tail: float):
    """4 x 4 image, one 2 x 2 region scored (0.9, 0.8, 0.7, tail); 12 normal pixels."""
    amap = np.zeros((4, 4))
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    amap[1, 1], amap[1, 2], amap[2, 1], amap[2, 2] = 0.9, 0.8, 0.7, tail
    amap[0, 0], amap[3, 3] = 0.85, 0.6  # two normal pixels above part of the region
    return amap[None], mask[None]


def test_aupro_single_region():
    # curve (FPR, PRO): (0, 1/4) (1/12, 1/4) (1/12, 3/4) (1/6, 3/4) (1/6, 1) (1, 1)
    maps, masks = single_region_case(tail=0.2)
    expected = (0.25 / 12 + 0.75 / 12 + (0.3 - 1 / 6) * 1.0) / 0.3
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert brute_aupro(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_aupro_interpolates_at_the_fpr_limit():
    # the last region pixel ties with the 10 zero normals: segment (1/6, 3/4) -> (1, 1) crosses 0.3
    maps, masks = single_region_case(tail=0.0)
    pro_at_limit = 0.75 + 0.25 * (0.3 - 1 / 6) / (1 - 1 / 6)  # 0.79
    expected = (0.25 / 12 + 0.75 / 12 + (0.75 + pro_at_limit) / 2 * (0.3 - 1 / 6)) / 0.3
    assert expected == pytest.approx(0.62)
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-12)
    # a 100-threshold approximation would not give this: check we are not one
    assert aupro(maps, masks, max_fpr=1.0) == pytest.approx(
        0.25 / 12 + 0.75 / 12 + (0.75 + 1.0) / 2 * (1 - 1 / 6), abs=1e-12)


def test_aupro_two_regions_of_different_size_count_equally():
    amap = np.zeros((6, 6))
    mask = np.zeros((6, 6), dtype=bool)
    mask[0, 0] = True  # region A: 1 pixel, found at 0.9
    amap[0, 0] = 0.9
    mask[3:5, 3:5] = True  # region B: 4 pixels, half found at 0.5, half tied with the normals
    amap[3, 3] = amap[3, 4] = 0.5
    # (FPR, PRO): (0, 1/2) at 0.9, (0, 3/4) at 0.5, (1, 1) at 0; pixel recall at 0.5 is only 3/5
    expected = (0.75 + (0.75 + 0.25 * 0.3)) / 2 * 0.3 / 0.3
    assert aupro(amap[None], mask[None]) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.7875)
    assert brute_aupro(amap[None], mask[None]) == pytest.approx(expected, abs=1e-12)


def test_aupro_regions_are_8_connected():
    amap = np.zeros((6, 6))
    mask = np.zeros((6, 6), dtype=bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one region of 2 pixels
    mask[4, 4] = True
    amap[0, 0] = 1.0
    # PRO at 1.0 = (1/2 + 0) / 2 = 1/4 (three 4-connected regions would give 1/3)
    expected = (0.25 + (0.25 + 0.75 * 0.3)) / 2
    assert aupro(amap[None], mask[None]) == pytest.approx(expected, abs=1e-12)


def test_aupro_all_normal_image_adds_false_positives_only():
    maps, masks = single_region_case(tail=0.2)
    normal = np.zeros((1, 4, 4))
    normal[0, 2, 2] = 0.95  # above everything: a false positive first
    maps2 = np.concatenate([maps, normal])
    masks2 = np.concatenate([masks, np.zeros((1, 4, 4), dtype=bool)])
    # 28 normal pixels: (1/28, 0) (1/28, 1/4) (2/28, 1/4) (2/28, 3/4) (3/28, 3/4) (3/28, 1) (1, 1)
    expected = (0.25 / 28 + 0.75 / 28 + (0.3 - 3 / 28)) / 0.3
    assert aupro(maps2, masks2) == pytest.approx(expected, abs=1e-12)
    assert brute_aupro(maps2, masks2) == pytest.approx(expected, abs=1e-12)
    got = compute_metrics([0.9, 0.95], [1, 0], maps2, masks2)
    assert got["aupro"] == pytest.approx(expected, abs=1e-12)
    assert got["i_auroc"] == 0.0  # the normal image scores higher


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_brute_force_on_random_data(seed):
    maps, masks = random_maps(seed, n=6, size=20)
    maps = np.round(maps, 2)  # ties across normal and anomalous pixels
    assert aupro(maps, masks) == pytest.approx(brute_aupro(maps, masks), abs=1e-12)


def test_undefined_metrics_are_nan():
    maps = np.random.default_rng(0).random((3, 8, 8))
    masks = np.zeros((3, 8, 8))
    got = compute_metrics([0.1, 0.2, 0.3], [0, 0, 0], maps, masks)
    assert all(math.isnan(got[k]) for k in ("i_auroc", "i_ap", "i_f1max", "p_auroc", "aupro", "mad"))
    assert math.isnan(auroc(binary_curve([0.2, 0.4], [1, 1])))
    assert math.isnan(average_precision(binary_curve([0.2, 0.4], [0, 0])))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="0 / 1"):
        image_metrics([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics([0.1], [1], np.full((1, 2, 2), np.nan), np.ones((1, 2, 2)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        compute_metrics([0.1], [1], np.zeros((1, 2, 2)), np.ones((1, 3, 2)))
    with pytest.raises(ValueError, match="scores"):
        compute_metrics([0.1, 0.3], [1, 0], np.zeros((1, 2, 2)), np.ones((1, 2, 2)))


# ----------------------------------------------------------------------------- streaming histogram
def stream(maps, masks, bins, batch=4, exact=False, scale=None):
    acc = AnomalyMetrics(bins=bins, exact=exact)
    scores = maps.reshape(len(maps), -1).max(1)
    labels = masks.reshape(len(maps), -1).any(1).astype(int)
    for i in range(0, len(maps), batch):
        acc.update(scores[i:i + batch], labels[i:i + batch], maps[i:i + batch], masks[i:i + batch])
    return acc, compute_metrics(scores, labels, maps, masks)


def test_histogram_matches_exact_on_a_million_pixels():
    maps, masks = random_maps(7, n=16, size=256)  # 1.05 M pixels
    maps[8:] *= 3.0  # later batches outgrow the first range: the bins double twice
    acc, exact = stream(maps, masks, bins=1 << 18)
    got = acc.compute()
    bounds = acc.pixels.error_bounds()
    for k in ("i_auroc", "i_ap", "i_f1max"):
        assert got[k] == exact[k]
    for k in ("p_auroc", "p_ap", "p_f1max", "aupro", "mad"):
        assert got[k] == pytest.approx(exact[k], abs=1e-5), k
    for k in ("p_auroc", "aupro"):
        assert abs(got[k] - exact[k]) <= bounds[k] + 1e-12, k
    assert got["p_f1max"] <= exact["p_f1max"] <= got["p_f1max"] + bounds["p_f1max"] + 1e-12


@pytest.mark.parametrize("bins", [16, 256])
def test_histogram_error_bounds_hold_with_coarse_bins(bins):
    maps, masks = random_maps(3, n=8, size=64)
    acc, exact = stream(maps, masks, bins=bins)
    got, bounds = acc.compute(), acc.pixels.error_bounds()
    assert abs(got["p_auroc"] - exact["p_auroc"]) <= bounds["p_auroc"] + 1e-12
    assert abs(got["aupro"] - exact["aupro"]) <= bounds["aupro"] + 1e-12
    assert got["p_f1max"] <= exact["p_f1max"] + 1e-12
    assert exact["p_f1max"] <= got["p_f1max"] + bounds["p_f1max"] + 1e-12
    if bins == 16:  # coarse bins lose something, and the bounds say so
        assert bounds["p_auroc"] > 1e-4 and abs(got["p_auroc"] - exact["p_auroc"]) > 0


def test_histogram_is_exact_when_no_bin_holds_two_distinct_scores():
    rng = np.random.default_rng(1)
    maps = rng.integers(0, 8, (6, 16, 16)).astype(float)  # integer scores 0 .. 10
    masks = np.zeros(maps.shape, dtype=bool)
    masks[:3, 4:9, 4:9] = True
    maps[masks] += 3
    maps[:2] = np.minimum(maps[:2], 2)  # the first batch spans 0 .. 2: the range doubles 3 times
    h = PixelHistogram(bins=64)
    h.update(maps[:2], masks[:2])
    h.update(maps[2:], masks[2:])
    assert h.width < 0.5  # distinct integers still fall in distinct bins
    c = binary_curve(maps.ravel(), masks.ravel())
    hist = h.compute()
    assert hist["p_auroc"] == pytest.approx(auroc(c), abs=1e-12)
    assert hist["p_ap"] == pytest.approx(average_precision(c), abs=1e-12)
    assert hist["p_f1max"] == pytest.approx(f1_max(c)[0], abs=1e-12)
    assert hist["aupro"] == pytest.approx(aupro(maps, masks), abs=1e-12)
    assert h.pos.sum() == masks.sum() and h.neg.sum() == (~masks).sum()


def test_histogram_grows_downwards_for_negative_scores():
    maps, masks = random_maps(5, n=8, size=32)
    maps = maps - 1.0
    maps[4:] -= 5.0  # a later batch below the first range
    acc, exact = stream(maps, masks, bins=1 << 16)
    got = acc.compute()
    for k in ("p_auroc", "p_ap", "p_f1max", "aupro"):
        assert got[k] == pytest.approx(exact[k], abs=1e-4), k


def test_accumulator_exact_mode_and_reset():
    maps, masks = random_maps(2, n=8, size=32)
    acc, exact = stream(maps, masks, bins=64, exact=True)
    got = acc.compute()
    assert got == pytest.approx(exact, abs=1e-6)  # maps kept as float32
    t = acc.thresholds()
    assert set(t) == {"image", "pixel"} and np.isfinite(list(t.values())).all()
    acc.reset()
    with pytest.raises(ValueError, match="no data"):
        acc.compute()


def test_accumulator_without_masks_gives_image_metrics_only():
    acc = AnomalyMetrics()
    acc.update([0.1, 0.9, 0.3], [0, 1, 0])
    got = acc.compute()
    assert got["i_auroc"] == 1.0
    assert all(math.isnan(got[k]) for k in ("p_auroc", "p_ap", "p_f1max", "aupro", "mad"))
    assert math.isnan(acc.thresholds()["pixel"])
