"""Fitting a checkpoint's calibration on a split's features, and measuring it (ECE, reliability plot).

A sample is one served hit: for every query of the split in both directions, its top `TOP_K` hits as a search
serves them (kNN alone, and re-ranked with the checkpoint's setting), labelled 1 when the hit is a ground-truth
match (the caption's own image; one of the image's own captions)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aladin.errors import AladinError
from aladin.evaluate.scorers import served_top_k
from aladin.fileio import atomic_path
from aladin.model import AladinModel
from aladin.model.calibration import (
    IMAGE_TO_TEXT,
    TEXT_TO_IMAGE,
    Calibration,
    curve_key,
    expected_calibration_error,
    fit_curve,
)
from aladin.model.features import FeatureTensors, embed_split

#: Hits per query a calibration is fitted and measured on: the results a search shows by default (`--k 10`).
TOP_K = 10
#: Equal-width confidence bins of the expected calibration error and the reliability plot.
ECE_BINS = 10
DIRECTIONS = (TEXT_TO_IMAGE, IMAGE_TO_TEXT)
TITLES = {TEXT_TO_IMAGE: "text → image", IMAGE_TO_TEXT: "image → text"}


@dataclass
class Samples:
    """Served scores of one (direction, stage), flattened: score, label and query of each hit."""

    scores: np.ndarray
    labels: np.ndarray
    queries: np.ndarray


def served_samples(model: AladinModel, feats: FeatureTensors, top_k: int = TOP_K) -> dict[str, Samples]:
    """Every query's top `top_k` served hits on a split, per curve key, with ground-truth labels."""
    image, text = embed_split(model, feats)
    setting = model.rerank
    owner = feats.caption_image.to(image.global_vector.device)
    served = served_top_k(model, image, text, top_k, setting.depth, setting.fusion)
    out = {}
    for (direction, reranked), (items, scores) in served.items():
        queries = torch.arange(items.shape[0], device=items.device)[:, None].expand_as(items)
        # text→image: the hit is the caption's image; image→text: the hit caption belongs to the query image
        labels = items == owner[:, None] if direction == 0 else owner[items] == queries
        out[curve_key(DIRECTIONS[direction], reranked)] = Samples(
            scores.float().cpu().numpy().ravel(),
            labels.cpu().numpy().ravel().astype(np.float64),
            queries.cpu().numpy().ravel(),
        )
    return out


def split_description(split: str, feats: FeatureTensors) -> str:
    """What a calibration records it was fitted on."""
    return f"{split} split: {feats.num_images} images, {feats.num_captions} captions"


@torch.inference_mode()
def fit_calibration(
    model: AladinModel, feats: FeatureTensors, fitted_on: str, top_k: int = TOP_K
) -> Calibration:
    """A calibration for `model` from a (validation) split: one curve per direction and stage, each the better
    of isotonic and Platt by cross-validated ECE."""
    samples = served_samples(model, feats, top_k)
    setting = model.rerank
    return Calibration(
        curves={key: fit_curve(s.scores, s.labels, s.queries) for key, s in samples.items()},
        fusion=setting.fusion,
        rerank_depth=setting.depth,
        top_k=top_k,
        model_fingerprint=model.fingerprint(),
        fitted_on=fitted_on,
        collections=searched_collections(feats),
    )


def searched_collections(feats: FeatureTensors) -> dict[str, int]:
    """How many items each direction's queries search on a split: its images, its captions."""
    return {TEXT_TO_IMAGE: feats.num_images, IMAGE_TO_TEXT: feats.num_captions}


@dataclass
class CalibrationReport:
    """A calibration measured on a split, for the stage a search serves by default."""

    stage: str  # "reranked" or "knn"
    ece: dict[str, float]  # per direction, and "both" (all samples pooled)
    samples: dict[str, Samples]  # per direction: confidence (not score) and label
    top_k: int
    bins: int = ECE_BINS

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "ece": {k: round(v, 5) for k, v in self.ece.items()},
            "bins": f"{self.bins} equal-width",
            "top_k": self.top_k,
        }

    def line(self) -> str:
        per = ", ".join(f"{TITLES[d]} {self.ece[d]:.3f}" for d in DIRECTIONS)
        return (
            f"expected calibration error ({self.bins} equal-width bins, top {self.top_k} hits per query, "
            f"{self.stage} scores): {self.ece['both']:.3f} ({per})"
        )


@torch.inference_mode()
def calibration_report(model: AladinModel, feats: FeatureTensors) -> CalibrationReport | None:
    """How well `model`'s calibration holds on a split (None when it has none): ECE of the stage its searches
    serve by default (re-ranked when re-ranking is on by default, else kNN)."""
    calibration = model.calibration
    if calibration is None:
        return None
    reranked = bool(model.rerank.default_depth)
    samples = served_samples(model, feats, calibration.top_k)
    confident, collections = {}, searched_collections(feats)
    for direction in DIRECTIONS:
        s = samples[curve_key(direction, reranked)]
        predicted = calibration.confidence(direction, reranked, s.scores, collections[direction])
        if predicted is None:
            raise AladinError(f"the model's calibration has no {curve_key(direction, reranked)!r} curve")
        confident[direction] = Samples(predicted, s.labels, s.queries)
    ece = {d: expected_calibration_error(s.scores, s.labels) for d, s in confident.items()}
    pooled = [np.concatenate([getattr(s, f) for s in confident.values()]) for f in ("scores", "labels")]
    ece["both"] = expected_calibration_error(*pooled)
    return CalibrationReport("reranked" if reranked else "knn", ece, confident, calibration.top_k)


def plot_reliability(report: CalibrationReport, path: str | Path) -> None:
    """Reliability diagram (PNG): per direction, the fraction of true matches in each confidence bin against
    the bin's mean confidence (on the diagonal when calibrated), with each bin's share of hits below."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True, height_ratios=(3, 1))
    edges = np.linspace(0, 1, report.bins + 1)
    for column, direction in enumerate(DIRECTIONS):
        s = report.samples[direction]
        which = np.minimum((s.scores * report.bins).astype(int), report.bins - 1)
        filled = [b for b in range(report.bins) if (which == b).any()]
        mean_conf = [s.scores[which == b].mean() for b in filled]
        accuracy = [s.labels[which == b].mean() for b in filled]
        top, bottom = axes[0][column], axes[1][column]
        top.plot([0, 1], [0, 1], ls="--", color="grey", label="perfectly calibrated")
        top.plot(mean_conf, accuracy, marker="o", label="fraction of true matches")
        top.set_title(f"{TITLES[direction]}: ECE {report.ece[direction]:.3f}")
        top.set_ylabel("fraction of true matches")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.grid(alpha=0.3)
        top.legend(loc="upper left")
        bottom.hist(s.scores, bins=edges)
        bottom.set_xlabel("confidence")
        bottom.set_ylabel("hits")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
