"""The seven anomaly-detection metrics and mAD, exact and streamed.

Image level (one score per image, label 0 / 1): AUROC, average precision (AP, the step-wise sum
``sum_n (R_n - R_{n-1}) P_n`` that scikit-learn computes), F1-max (the best F1 over all thresholds).
Pixel level (one score per pixel, ground-truth masks): the same three, plus AUPRO: the per-region
overlap (PRO, the mean over connected ground-truth regions, 8-connectivity, of the fraction of the
region above the threshold) against the false-positive rate over all normal pixels, integrated with
the trapezoid rule from FPR 0 to 0.3 (the curve interpolated linearly at 0.3) and divided by 0.3.
mAD is the mean of the seven. Every value is a fraction in [0, 1]; NaN where it is undefined (no
anomalous or no normal images / pixels).

Two ways to compute them:

- :func:`compute_metrics` is exact: every distinct score is a threshold. It needs all maps in memory.
- :class:`AnomalyMetrics` streams: ``update`` per batch, ``compute`` at the end, ``reset``. Image
  scores are kept (one float per image) and their metrics are exact. Pixel scores go into a
  :class:`PixelHistogram` of ``bins`` equal-width bins per class (normal count, anomalous count,
  and the per-region weights of AUPRO), so memory does not grow with the test set (4 x 8 x ``bins``
  bytes). The bin range follows the data: it starts at the first batch's range (from 0 when the
  scores are non-negative, as anomaly maps are) and doubles, merging bin pairs (which loses nothing
  already counted), whenever a batch falls outside. The bin width ends at most 2 x (largest score)
  / ``bins`` for non-negative scores (4 x the score range otherwise).

Accuracy of the histogram: every curve point it uses is a point of the exact curve (the threshold at
a bin's lower edge: the counts above it are exact); only the points of thresholds inside a bin are
missing. The values are therefore the exact metrics of the scores rounded down to their bin edge,
and :meth:`PixelHistogram.error_bounds` gives worst-case bounds from the counts alone (AUROC and
AUPRO: half the area of the boxes between consecutive curve points, where the monotone exact curve
must run; F1-max: the best F1 a threshold inside a bin could reach). AP has no such bound; the tests
check it, with the others, against the exact computation. Measured on the tests' million-pixel set
(16 maps of 256 x 256, scores in [0, 7.2], two doublings) with the default 2^18 bins: AUPRO 3.5e-6,
AUROC 1.7e-6, F1-max 1.1e-7 and AP 6.9e-8 from the exact values, within the bounds the counts give
(2.3e-5 for AUROC, 2.5e-5 for AUPRO); 2^16 bins: 6.9e-6 at most.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage

IMAGE_KEYS = ("i_auroc", "i_ap", "i_f1max")
PIXEL_KEYS = ("p_auroc", "p_ap", "p_f1max", "aupro")
METRIC_KEYS = IMAGE_KEYS + PIXEL_KEYS
ALL_KEYS = METRIC_KEYS + ("mad",)
MAX_FPR = 0.3
DEFAULT_BINS = 1 << 18
_CONNECTIVITY = np.ones((3, 3), dtype=bool)  # 8-connected regions, as the MVTec AD evaluation


class Curve(NamedTuple):
    """Cumulative counts at decreasing thresholds (a score >= threshold is called anomalous).

    Attributes:
        thresholds: ``(T,)`` decreasing.
        tps: ``(T,)`` true positives at each threshold (float64, non-decreasing).
        fps: ``(T,)`` false positives at each threshold (float64, non-decreasing).
        pos: total positives P; neg: total negatives N.
    """

    thresholds: np.ndarray
    tps: np.ndarray
    fps: np.ndarray
    pos: float
    neg: float


def _as_numpy(x, dtype=None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_finite(name: str, x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has NaN or infinite values")


def _binary(name: str, y: np.ndarray) -> np.ndarray:
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} must hold 0 / 1 values only, got {np.unique(y)[:6]}")
    return y.astype(bool)


def binary_curve(scores, labels) -> Curve:
    """Exact :class:`Curve` over every distinct score.

    Args:
        scores: ``(M,)`` real scores; labels: ``(M,)`` in {0, 1}.
    """
    s = _as_numpy(scores, np.float64).ravel()
    y = _binary("labels", _as_numpy(labels).ravel())
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in size")
    _check_finite("scores", s)
    order = np.argsort(-s, kind="stable")  # (M,) decreasing score
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1] if s.size else np.zeros(0, int)  # tie ends
    tps = np.cumsum(y, dtype=np.float64)[last]
    fps = (last + 1).astype(np.float64) - tps
    return Curve(s[last], tps, fps, float(y.sum()), float(y.size - y.sum()))


def auroc(c: Curve) -> float:
    """Area under the ROC curve (trapezoid rule), NaN without positives or negatives."""
    if c.pos == 0 or c.neg == 0:
        return math.nan
    tpr = np.r_[0.0, c.tps / c.pos]
    fpr = np.r_[0.0, c.fps / c.neg]
    return float(np.trapezoid(tpr, fpr))


def average_precision(c: Curve) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` (no interpolation), NaN without positives."""
    if c.pos == 0:
        return math.nan
    precision = c.tps / np.maximum(c.tps + c.fps, 1e-300)
    recall = np.r_[0.0, c.tps / c.pos]
    return float(np.sum(np.diff(recall) * precision))


def f1_max(c: Curve) -> tuple[float, float]:
    """The best F1 over the thresholds and the threshold that gives it (NaN, NaN without positives).

    Returns:
        ``(f1, threshold)``: scores ``>= threshold`` are called anomalous.
    """
    if c.pos == 0 or c.thresholds.size == 0:
        return math.nan, math.nan
    f1 = 2 * c.tps / (c.tps + c.fps + c.pos)  # 2PR / (P + R) = 2 TP / (TP + FP + P)
    best = int(np.argmax(f1))
    return float(f1[best]), float(c.thresholds[best])


def integrate_to(fpr: np.ndarray, y: np.ndarray, max_fpr: float = MAX_FPR) -> float:
    """Trapezoid area under ``y(fpr)`` from 0 to ``max_fpr``, interpolating linearly at ``max_fpr``,
    divided by ``max_fpr``.

    Args:
        fpr: ``(T,)`` non-decreasing, starting at 0; y: ``(T,)``.
    """
    inside = int(np.searchsorted(fpr, max_fpr, side="right"))  # points with fpr <= max_fpr
    x, v = fpr[:inside], y[:inside]
    if inside < fpr.size and x[-1] < max_fpr:
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], y[inside - 1], y[inside]
        x = np.r_[x, max_fpr]
        v = np.r_[v, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)]
    return float(np.trapezoid(v, x) / max_fpr)


def region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel PRO weights: ``1 / |region|`` inside each 8-connected region, 0 outside.

    Args:
        masks: ``(N, H, W)`` bool.

    Returns:
        ``(weights (N, H, W) float64, number of regions)``.
    """
    weights = np.zeros(masks.shape, dtype=np.float64)
    regions = 0
    for i, m in enumerate(masks):
        if not m.any():
            continue
        lab, n = ndimage.label(m, structure=_CONNECTIVITY)  # (H, W) region ids 1..n
        sizes = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)  # (n + 1,)
        sizes[0] = np.inf  # background: weight 0
        weights[i] = 1.0 / sizes[lab]
        regions += n
    return weights, regions


def aupro(maps, masks, max_fpr: float = MAX_FPR) -> float:
    """Exact normalised AUPRO up to ``max_fpr``, every distinct pixel score a threshold.

    Args:
        maps: ``(N, H, W)`` pixel scores; masks: ``(N, H, W)`` in {0, 1}.

    Returns:
        The area under PRO(FPR) from 0 to ``max_fpr`` divided by ``max_fpr``; NaN without regions
        or without normal pixels.
    """
    a = _as_numpy(maps, np.float64)
    m = _binary("masks", _as_numpy(masks))
    if a.shape != m.shape or a.ndim != 3:
        raise ValueError(f"maps {a.shape} and masks {m.shape} must both be (N, H, W)")
    _check_finite("maps", a)
    w, regions = region_weights(m)
    neg = float((~m).sum())
    if regions == 0 or neg == 0:
        return math.nan
    s = a.ravel()
    order = np.argsort(-s, kind="stable")  # (M,) decreasing
    s = s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # tie-group ends
    fpr = np.cumsum(~m.ravel()[order], dtype=np.float64)[last] / neg
    pro = np.cumsum(w.ravel()[order])[last] / regions
    return integrate_to(np.r_[0.0, fpr], np.r_[0.0, pro], max_fpr)


def mad(values: dict[str, float]) -> float:
    """Mean of the seven metrics (NaN if any is NaN or missing)."""
    vals = [values.get(k, math.nan) for k in METRIC_KEYS]
    return math.nan if any(v is None or math.isnan(v) for v in vals) else float(np.mean(vals))


def image_metrics(scores, labels) -> dict[str, float]:
    """``i_auroc, i_ap, i_f1max`` of ``scores (N,)`` against ``labels (N,)`` in {0, 1}."""
    c = binary_curve(scores, labels)
    return {"i_auroc": auroc(c), "i_ap": average_precision(c), "i_f1max": f1_max(c)[0]}


def _check_maps(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    a = _as_numpy(maps, np.float64)
    m = _binary("masks", _as_numpy(masks))
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if a.shape != m.shape or a.ndim != 3:
        raise ValueError(f"maps {a.shape} and masks {m.shape} must both be (N, H, W)")
    _check_finite("maps", a)
    return a, m


def compute_metrics(scores, labels, maps, masks, max_fpr: float = MAX_FPR) -> dict[str, float]:
    """All seven metrics and mAD, exactly (every distinct score a threshold).

    Args:
        scores: ``(N,)`` image scores; labels: ``(N,)`` in {0, 1}.
        maps: ``(N, H, W)`` pixel scores (``(N, 1, H, W)`` accepted); masks: same shape, in {0, 1}.
        max_fpr: the FPR limit of AUPRO.

    Returns:
        ``{i_auroc, i_ap, i_f1max, p_auroc, p_ap, p_f1max, aupro, mad}``, floats in [0, 1] (NaN where
        undefined).
    """
    a, m = _check_maps(maps, masks)
    if len(_as_numpy(scores).ravel()) != a.shape[0]:
        raise ValueError(f"{len(_as_numpy(scores).ravel())} scores for {a.shape[0]} maps")
    out = image_metrics(scores, labels)
    c = binary_curve(a.ravel(), m.ravel())
    out.update(p_auroc=auroc(c), p_ap=average_precision(c), p_f1max=f1_max(c)[0],
               aupro=aupro(a, m, max_fpr))
    out["mad"] = mad(out)
    return out


class PixelHistogram:
    """Streaming pixel metrics over an adaptive equal-width histogram (see the module docstring).

    Args:
        bins: number of bins (even; memory 4 x 8 x ``bins`` bytes).
        max_fpr: the FPR limit of AUPRO.
    """

    def __init__(self, bins: int = DEFAULT_BINS, max_fpr: float = MAX_FPR):
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.bins, self.max_fpr = int(bins), float(max_fpr)
        self.reset()

    def reset(self) -> None:
        """Forget everything counted."""
        self.lo: float | None = None
        self.width = 0.0
        self.neg = np.zeros(self.bins)  # normal pixels per bin
        self.pos = np.zeros(self.bins)  # anomalous pixels per bin
        self.pro = np.zeros(self.bins)  # sum of 1 / |region| over anomalous pixels per bin
        self.regions = 0

    def _double(self, downwards: bool) -> None:
        """Double the bin width, keeping the counts: bin pairs merge (exact, nothing re-binned)."""
        half = self.bins // 2
        for name in ("neg", "pos", "pro"):
            h = getattr(self, name)
            merged = h.reshape(half, 2).sum(axis=1)  # (bins / 2,)
            out = np.zeros(self.bins)
            if downwards:
                out[half:] = merged  # the old range becomes the upper half
            else:
                out[:half] = merged
            setattr(self, name, out)
        if downwards:
            self.lo -= self.bins * self.width
        self.width *= 2

    def _fit(self, smin: float, smax: float) -> None:
        if self.lo is None:
            lo = 0.0 if smin >= 0 else smin  # non-negative maps (MambaAD's): anchor at 0, never grow down
            span = smax - lo
            span = span * (1 + 2.0 ** -20) if span > 0 else max(abs(smax), 1.0) * 2.0 ** -20
            self.lo, self.width = lo, span / self.bins
        while smin < self.lo or smax >= self.lo + self.bins * self.width:
            self._double(downwards=smin < self.lo)

    def update(self, maps, masks) -> None:
        """Count one batch.

        Args:
            maps: ``(B, H, W)`` pixel scores (``(B, 1, H, W)`` accepted); masks: same shape, {0, 1}.
        """
        a, m = _check_maps(maps, masks)
        if a.size == 0:
            return
        self._fit(float(a.min()), float(a.max()))
        idx = np.floor((a.ravel() - self.lo) / self.width).astype(np.int64)  # (B H W,)
        np.clip(idx, 0, self.bins - 1, out=idx)
        flat = m.ravel()
        w, regions = region_weights(m)
        self.neg += np.bincount(idx[~flat], minlength=self.bins)
        self.pos += np.bincount(idx[flat], minlength=self.bins)
        self.pro += np.bincount(idx[flat], weights=w.ravel()[flat], minlength=self.bins)
        self.regions += regions

    def _cumulative(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Lower bin edges (decreasing) and the cumulative counts at them, non-empty bins only."""
        keep = np.flatnonzero(self.neg + self.pos)[::-1]  # non-empty bins, top first
        tps = np.cumsum(self.pos[::-1])[::-1][keep]  # anomalous pixels >= lower edge of each bin
        fps = np.cumsum(self.neg[::-1])[::-1][keep]
        pro = np.cumsum(self.pro[::-1])[::-1][keep]
        edges = self.lo + keep * self.width if self.lo is not None else keep.astype(float)
        return edges, tps, fps, pro

    def curve(self) -> Curve:
        """The pixel :class:`Curve` at the lower edges of the non-empty bins."""
        edges, tps, fps, _ = self._cumulative()
        return Curve(edges, tps, fps, float(self.pos.sum()), float(self.neg.sum()))

    def aupro(self) -> float:
        """Normalised AUPRO up to ``max_fpr`` from the histogram (NaN without regions)."""
        neg = self.neg.sum()
        if self.regions == 0 or neg == 0:
            return math.nan
        _, _, fps, pro = self._cumulative()
        return integrate_to(np.r_[0.0, fps / neg], np.r_[0.0, pro / self.regions], self.max_fpr)

    def compute(self) -> dict[str, float]:
        """``{p_auroc, p_ap, p_f1max, aupro}`` (NaN where undefined)."""
        c = self.curve()
        return {"p_auroc": auroc(c), "p_ap": average_precision(c), "p_f1max": f1_max(c)[0],
                "aupro": self.aupro()}

    def threshold(self) -> float:
        """The pixel F1-max threshold (a bin edge)."""
        return f1_max(self.curve())[1]

    def error_bounds(self) -> dict[str, float]:
        """Worst-case distance of each histogram value from the exact one, from the counts alone.

        ``p_auroc`` and ``aupro``: half the summed areas of the boxes between consecutive curve points
        (the exact curve runs inside them, being monotone). ``p_f1max``: the best F1 any threshold
        inside a bin could reach minus the value computed (the computed value is never above the
        exact one). ``p_ap`` has no such bound; the tests compare it with the exact value.
        """
        c = self.curve()
        out = {"p_auroc": math.nan, "p_f1max": math.nan, "aupro": math.nan}
        if c.pos and c.neg:
            tpr, fpr = np.r_[0.0, c.tps / c.pos], np.r_[0.0, c.fps / c.neg]
            out["p_auroc"] = float(np.sum(np.diff(tpr) * np.diff(fpr)) / 2)
        if c.pos:
            tp_hi, fp_lo = c.tps, np.r_[0.0, c.fps[:-1]]  # inside bin: tp <= its own, fp >= the one above
            f1_bound = np.max(2 * tp_hi / (tp_hi + fp_lo + c.pos))
            out["p_f1max"] = float(f1_bound - f1_max(c)[0])
        if self.regions and c.neg:
            _, _, fps, pro = self._cumulative()
            fpr, prc = np.r_[0.0, fps / c.neg], np.r_[0.0, pro / self.regions]
            inside = int(np.searchsorted(fpr, self.max_fpr, side="right"))
            stop = min(inside + 1, fpr.size)  # the box that holds max_fpr counts too
            out["aupro"] = float(np.sum(np.diff(fpr[:stop]) * np.diff(prc[:stop])) / 2 / self.max_fpr)
        return out


class AnomalyMetrics:
    """Update / compute / reset accumulator of the seven metrics and mAD.

    Image scores are kept (exact image metrics); pixel metrics stream through a
    :class:`PixelHistogram`, or, with ``exact=True``, the maps are kept as float32 and the pixel
    metrics computed exactly.

    Args:
        bins: histogram bins for the pixel metrics.
        exact: keep the maps and compute the pixel metrics exactly.
        max_fpr: the FPR limit of AUPRO.
    """

    def __init__(self, bins: int = DEFAULT_BINS, exact: bool = False, max_fpr: float = MAX_FPR):
        self.exact, self.max_fpr = exact, max_fpr
        self.pixels = PixelHistogram(bins, max_fpr)
        self.reset()

    def reset(self) -> None:
        """Forget everything counted."""
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.maps: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.pixel_truth = True
        self.pixels.reset()

    def update(self, scores, labels, maps=None, masks=None) -> None:
        """Add a batch.

        Args:
            scores: ``(B,)`` image scores; labels: ``(B,)`` in {0, 1}.
            maps: ``(B, H, W)`` or ``(B, 1, H, W)`` pixel scores; masks: same shape in {0, 1}. Leave
                masks None when the pixel ground truth is unknown: pixel metrics then come out NaN.
        """
        s = _as_numpy(scores, np.float64).ravel()
        y = _as_numpy(labels).ravel()
        if s.shape != y.shape:
            raise ValueError(f"scores {s.shape} and labels {y.shape} differ in size")
        self.scores.append(s)
        self.labels.append(y)
        if maps is None or masks is None:
            self.pixel_truth = False
            return
        if self.exact:
            a, m = _check_maps(maps, masks)
            self.maps.append(a.astype(np.float32))
            self.masks.append(m)
        else:
            self.pixels.update(maps, masks)

    def _image(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.scores:
            raise ValueError("no data: call update() first")
        return np.concatenate(self.scores), np.concatenate(self.labels)

    def compute(self) -> dict[str, float]:
        """``{i_auroc, i_ap, i_f1max, p_auroc, p_ap, p_f1max, aupro, mad}``, NaN where undefined."""
        out = image_metrics(*self._image())
        if not self.pixel_truth:
            out.update({k: math.nan for k in PIXEL_KEYS})
        elif self.exact:
            a, m = np.concatenate(self.maps), np.concatenate(self.masks)
            c = binary_curve(a.ravel(), m.ravel())
            out.update(p_auroc=auroc(c), p_ap=average_precision(c), p_f1max=f1_max(c)[0],
                       aupro=aupro(a, m, self.max_fpr))
        else:
            out.update(self.pixels.compute())
        out["mad"] = mad(out)
        return out

    def thresholds(self) -> dict[str, float]:
        """F1-max thresholds: ``{"image": t, "pixel": t}`` (score >= t is anomalous; NaN if unknown)."""
        image = f1_max(binary_curve(*self._image()))[1]
        if not self.pixel_truth:
            pixel = math.nan
        elif self.exact:
            a, m = np.concatenate(self.maps), np.concatenate(self.masks)
            pixel = f1_max(binary_curve(a.ravel(), m.ravel()))[1]
        else:
            pixel = self.pixels.threshold()
        return {"image": image, "pixel": pixel}
