"""Calibration: a served score (a fused re-rank score such as 1.98, or a kNN score) means nothing to a user, so a
checkpoint can carry, per search direction and stage, a monotone map from that score to the probability that the
hit is a true match, fitted on the validation split (`aladin.evaluate.calibration`).

The maps live in `calibration.json` beside the checkpoint's config.json; a checkpoint without one loads as
before and its hits carry no confidence. Re-saving a checkpoint replaces its folder, calibration included, so a
map can never outlive the weights it was fitted for (the file also records their fingerprint).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from aladin.errors import CheckpointError
from aladin.fileio import read_json, write_json

CALIBRATION_FILE = "calibration.json"
CALIBRATION_VERSION = 1
#: Search directions: text queries against images, image queries against captions (image→image search has no
#: ground truth to calibrate on, so it gets no confidence).
TEXT_TO_IMAGE, IMAGE_TO_TEXT = "text_to_image", "image_to_text"
#: What the served score is: the alignment head's fused re-rank score, or the kNN score alone (`--rerank 0`).
RERANKED, KNN = "reranked", "knn"
ISOTONIC, PLATT = "isotonic", "platt"


def curve_key(direction: str, reranked: bool) -> str:
    return f"{direction}/{RERANKED if reranked else KNN}"


@dataclass(frozen=True)
class Curve:
    """One monotone score → probability map: isotonic (breakpoints `scores` → `probabilities`, linear between
    them, flat outside) or Platt (a logistic in the score with a non-negative `slope`)."""

    method: str
    scores: tuple[float, ...] = ()
    probabilities: tuple[float, ...] = ()
    slope: float = 0.0
    intercept: float = 0.0
    #: Validation figures of the fit (sample counts, each method's cross-validated ECE).
    validation: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, scores: np.ndarray | list[float]) -> np.ndarray:
        x = np.asarray(scores, dtype=np.float64)
        if self.method == ISOTONIC:
            return np.interp(x, self.scores, self.probabilities)
        return 1.0 / (1.0 + np.exp(-(self.slope * x + self.intercept)))

    def to_json(self) -> dict[str, Any]:
        shape: dict[str, Any] = (
            {"scores": list(self.scores), "probabilities": list(self.probabilities)}
            if self.method == ISOTONIC
            else {"slope": self.slope, "intercept": self.intercept}
        )
        return {"method": self.method, **shape, "validation": dict(self.validation)}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> Curve:
        """Parse and check one stored curve; anything that is not a monotone map is refused naming `where`."""
        if not isinstance(raw, dict) or raw.get("method") not in (ISOTONIC, PLATT):
            raise CheckpointError(f"{where}: expected an object with method {ISOTONIC!r} or {PLATT!r}")
        validation = raw.get("validation", {})
        if not isinstance(validation, dict):
            raise CheckpointError(f"{where}.validation: expected an object")
        if raw["method"] == PLATT:
            slope, intercept = _number(raw, "slope", where), _number(raw, "intercept", where)
            if slope < 0:
                raise CheckpointError(f"{where}.slope: must be >= 0 (a higher score is never less likely)")
            return cls(PLATT, slope=slope, intercept=intercept, validation=validation)
        x, y = _numbers(raw, "scores", where), _numbers(raw, "probabilities", where)
        if not x or len(x) != len(y):
            raise CheckpointError(f"{where}: 'scores' and 'probabilities' must be non-empty and equally long")
        if np.any(np.diff(x) <= 0):
            raise CheckpointError(f"{where}.scores: must be strictly increasing")
        if np.any(np.diff(y) < 0) or min(y) < 0 or max(y) > 1:
            raise CheckpointError(f"{where}.probabilities: must be non-decreasing and within [0, 1]")
        return cls(ISOTONIC, tuple(x), tuple(y), validation=validation)


def _number(raw: dict, key: str, where: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise CheckpointError(f"{where}.{key}: expected a finite number, got {value!r}")
    return float(value)


def _numbers(raw: dict, key: str, where: str) -> list[float]:
    values = raw.get(key)
    if not isinstance(values, list):
        raise CheckpointError(f"{where}.{key}: expected a list of numbers")
    return [_number({key: v}, key, where) for v in values]


@dataclass(frozen=True)
class Calibration:
    """A checkpoint's curves (keyed by `curve_key`) and what they were fitted on: each query's top `top_k` hits,
    re-ranked at `rerank_depth` with kNN weight `fusion` (the re-rank setting of the checkpoint)."""

    curves: Mapping[str, Curve]
    fusion: float
    rerank_depth: int
    top_k: int
    model_fingerprint: str
    fitted_on: str = ""
    #: Per direction, how many items the fitting split searched (its images for text → image, its captions for
    #: image → text); empty for a calibration that applies its curves as they are, whatever the collection.
    collections: Mapping[str, int] = field(default_factory=dict)

    def confidence(
        self, direction: str, reranked: bool, scores: np.ndarray, collection: int | None = None
    ) -> np.ndarray | None:
        """P(true match) of each served score when searching `collection` items; None when no curve covers that
        search.

        A query has the same few true matches however large the collection, but a larger one holds more
        look-alikes at every score, so the odds that a hit is true scale with fitted size / `collection` (a
        prior shift): the curve fitted on a 200-image split would read too high on a 1,000-image index."""
        curve = self.curves.get(curve_key(direction, reranked))
        if curve is None:
            return None
        probability = curve(scores)
        fitted = self.collections.get(direction)
        if not collection or not fitted or collection == fitted:
            return probability
        p = np.clip(probability, 1e-9, 1 - 1e-9)
        return 1.0 / (1.0 + (1.0 - p) / p * (collection / fitted))

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": CALIBRATION_VERSION,
            "fitted_on": self.fitted_on,
            "top_k": self.top_k,
            "rerank": {"depth": self.rerank_depth, "fusion": self.fusion},
            "model_fingerprint": self.model_fingerprint,
            "collections": dict(sorted(self.collections.items())),
            "curves": {key: curve.to_json() for key, curve in sorted(self.curves.items())},
        }

    def save(self, checkpoint_dir: str | Path) -> Path:
        """Write calibration.json into a checkpoint folder atomically (a crash keeps the previous one)."""
        path = Path(checkpoint_dir) / CALIBRATION_FILE
        write_json(path, self.to_json())
        return path

    @classmethod
    def from_json(cls, raw: Any, where: str) -> Calibration:
        if not isinstance(raw, dict):
            raise CheckpointError(f"{where}: expected a JSON object")
        if raw.get("format_version") != CALIBRATION_VERSION:
            raise CheckpointError(
                f"{where}: format_version {raw.get('format_version')!r} is not supported "
                f"(this aladin reads {CALIBRATION_VERSION})"
            )
        rerank, curves = raw.get("rerank"), raw.get("curves")
        if not isinstance(rerank, dict):
            raise CheckpointError(f"{where}: field 'rerank' must be an object with depth and fusion")
        if not isinstance(curves, dict) or not curves:
            raise CheckpointError(f"{where}: field 'curves' must be a non-empty object")
        known = {curve_key(d, r) for d in (TEXT_TO_IMAGE, IMAGE_TO_TEXT) for r in (True, False)}
        unknown = sorted(set(curves) - known)
        if unknown:
            raise CheckpointError(f"{where}: unknown curve {unknown[0]!r} (expected one of {sorted(known)})")
        fingerprint, top_k = raw.get("model_fingerprint"), raw.get("top_k")
        if not isinstance(fingerprint, str) or not isinstance(top_k, int) or top_k < 1:
            raise CheckpointError(
                f"{where}: needs 'model_fingerprint' (text) and 'top_k' (a positive integer)"
            )
        collections = raw.get("collections", {})
        if not isinstance(collections, dict) or any(
            d not in (TEXT_TO_IMAGE, IMAGE_TO_TEXT) or not isinstance(n, int) or n < 1
            for d, n in collections.items()
        ):
            raise CheckpointError(
                f"{where}: field 'collections' must map {TEXT_TO_IMAGE!r}/{IMAGE_TO_TEXT!r} to positive integers"
            )
        return cls(
            collections=collections,
            curves={key: Curve.from_json(value, f"{where}: curves.{key}") for key, value in curves.items()},
            fusion=_number(rerank, "fusion", f"{where}: rerank"),
            rerank_depth=int(_number(rerank, "depth", f"{where}: rerank")),
            top_k=top_k,
            model_fingerprint=fingerprint,
            fitted_on=str(raw.get("fitted_on", "")),
        )


def load_calibration(
    checkpoint_dir: str | Path, fingerprint: Callable[[], str], fusion: float
) -> Calibration | None:
    """The checkpoint's calibration, None when it has none; a malformed one, or one fitted for other weights
    (`fingerprint()`, only computed when there is a file) or another re-rank fusion, is refused in one line."""
    path = Path(checkpoint_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    calibration = Calibration.from_json(read_json(path, "calibration"), str(path))
    if calibration.model_fingerprint != fingerprint():
        raise CheckpointError(
            f"{path}: fitted for other weights than this checkpoint's (run `aladin calibrate` again)"
        )
    if calibration.fusion != fusion:
        raise CheckpointError(
            f"{path}: fitted for re-rank fusion {calibration.fusion:g}, the checkpoint uses {fusion:g} "
            "(run `aladin calibrate` again)"
        )
    return calibration


# ---- fitting ------------------------------------------------------------------------------------------------
#: Pseudo-hits at the overall rate added to each isotonic block (see `fit_isotonic`).
PRIOR_HITS = 2.0


def fit_isotonic(scores: np.ndarray, labels: np.ndarray) -> Curve:
    """Pool-adjacent-violators on the scores sorted ascending: the non-decreasing step map closest (least
    squares) to the labels, stored as one breakpoint per pooled block (its mean score and its mean label, shrunk
    by `PRIOR_HITS` pseudo-hits at the overall rate: a block of three true hits at the top would otherwise read
    100%, which no collection size can lower)."""
    order = np.argsort(scores, kind="stable")
    x, y = np.asarray(scores, np.float64)[order], np.asarray(labels, np.float64)[order]
    # blocks as (sum of labels, sum of scores, count), merged while a block's mean exceeds the next one's
    sums: list[float] = []
    xsums: list[float] = []
    counts: list[int] = []
    for xi, yi in zip(x, y, strict=True):
        sums.append(yi)
        xsums.append(xi)
        counts.append(1)
        while len(sums) > 1 and sums[-2] / counts[-2] >= sums[-1] / counts[-1]:
            for block in (sums, xsums, counts):
                last = block.pop()
                block[-1] += last
    means_x = np.array(xsums) / np.array(counts)
    rate = float(y.mean()) if len(y) else 0.0
    means_y = (np.array(sums) + PRIOR_HITS * rate) / (np.array(counts) + PRIOR_HITS)
    keep = np.concatenate([[True], np.diff(means_x) > 0])  # equal scores in two blocks: keep the first
    return Curve(
        ISOTONIC, tuple(means_x[keep].tolist()), tuple(np.maximum.accumulate(means_y[keep]).tolist())
    )


def fit_platt(scores: np.ndarray, labels: np.ndarray, iterations: int = 100) -> Curve:
    """Logistic regression of the label on the score (Newton's method, a tiny ridge for separable data); the
    slope is kept non-negative so the map stays monotone."""
    x, y = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    mean, std = float(x.mean()), float(x.std()) or 1.0
    design = np.stack([(x - mean) / std, np.ones_like(x)], axis=1)
    w = np.zeros(2)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-design @ w))
        grad = design.T @ (p - y) + 1e-3 * w
        hess = design.T @ (design * (p * (1 - p))[:, None]) + 1e-3 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    slope = max(float(w[0]) / std, 0.0)
    return Curve(PLATT, slope=slope, intercept=float(w[1]) - slope * mean)


FITTERS = {ISOTONIC: fit_isotonic, PLATT: fit_platt}


def expected_calibration_error(confidence: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE over `bins` equal-width confidence bins: the sample-weighted mean gap between each bin's mean
    confidence and its fraction of true matches."""
    confidence, labels = np.asarray(confidence, np.float64), np.asarray(labels, np.float64)
    if not len(confidence):
        return 0.0
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap += inside.sum() * abs(confidence[inside].mean() - labels[inside].mean())
    return float(gap / len(confidence))


def fit_curve(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int = 0) -> Curve:
    """Both methods, each scored by 2-fold cross-validated ECE over `groups` (the query of each sample, so a
    query's hits stay together); the better one refitted on every sample, both ECEs in its `validation`."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    queries = np.unique(groups)
    half = set(np.random.default_rng(seed).permutation(queries)[: len(queries) // 2].tolist())
    fold = np.array([g in half for g in groups.tolist()])
    eces = {}
    for method, fitter in FITTERS.items():
        if fold.all() or not fold.any():  # a single query: nothing to hold out, so in-sample
            predicted = fitter(scores, labels)(scores)
        else:
            predicted = np.empty_like(scores)
            for held in (fold, ~fold):
                predicted[held] = fitter(scores[~held], labels[~held])(scores[held])
        eces[method] = expected_calibration_error(predicted, labels)
    best = min(eces, key=lambda m: (eces[m], m != ISOTONIC))
    validation = {
        "samples": int(len(scores)),
        "positives": int(labels.sum()),
        "queries": int(len(queries)),
        "cv_ece": {m: round(e, 5) for m, e in eces.items()},
    }
    return replace(FITTERS[best](scores, labels), validation=validation)
