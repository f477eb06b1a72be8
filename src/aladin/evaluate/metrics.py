"""Recall@K for image-text retrieval, computed the way the literature reports it.

Ties count against the model (a wrong item scored equal to the right one ranks ahead of it), so a
degenerate scorer that outputs a constant can never look perfect.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from aladin.errors import AladinError

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
# COCO's test split: 5,000 images, reported both as a whole ("5K") and as 5 folds of 1,000 ("1K").
COCO_5K_IMAGES = 5000
COCO_1K_FOLDS = 5
# Rows of the score matrix compared at once; bounds the temporary boolean matrix to chunk_size x T.
DEFAULT_CHUNK_SIZE = 256


def _as_tensors(scores: np.ndarray, caption_image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate once and view the inputs as tensors, so bad input fails loudly instead of skewing recall."""
    scores = np.asarray(scores)
    caption_image = np.asarray(caption_image)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise AladinError(f"scores must be a non-empty [images, captions] matrix, got shape {scores.shape}")
    n_images, n_captions = scores.shape
    if caption_image.shape != (n_captions,):
        raise AladinError(
            f"caption_image must have one entry per caption ({n_captions}), got shape {caption_image.shape}"
        )
    if not np.issubdtype(caption_image.dtype, np.integer):
        raise AladinError(f"caption_image must hold integer image indices, got dtype {caption_image.dtype}")
    if caption_image.min() < 0 or caption_image.max() >= n_images:
        raise AladinError(
            f"caption_image values must lie in [0, {n_images}), "
            f"got {caption_image.min()}..{caption_image.max()}"
        )
    missing = np.flatnonzero(np.bincount(caption_image, minlength=n_images) == 0)
    if missing.size:
        raise AladinError(f"{missing.size} image(s) have no caption (first: image {missing[0]})")
    scores_t = torch.from_numpy(np.ascontiguousarray(scores))
    if torch.isnan(scores_t).any():
        raise AladinError("scores contain NaN; ranks would be undefined")
    return scores_t, torch.from_numpy(caption_image.astype(np.int64))


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise AladinError(f"chunk_size must be >= 1, got {chunk_size}")


def t2i_ranks(
    scores: np.ndarray, caption_image: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
    """0-based rank of each caption's own image: how many other images score >= it (ties lose)."""
    _check_chunk_size(chunk_size)
    s, ci = _as_tensors(scores, caption_image)
    n_images, n_captions = s.shape
    right = s[ci, torch.arange(n_captions)]
    at_or_above = torch.zeros(n_captions, dtype=torch.int64)
    for start in range(0, n_images, chunk_size):
        at_or_above += (s[start : start + chunk_size] >= right).sum(dim=0)
    # The right image itself always satisfies >=; it is not "ahead" of itself.
    return (at_or_above - 1).numpy()


def i2t_ranks(
    scores: np.ndarray, caption_image: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
    """0-based rank of each image's best caption among other images' captions (ties lose)."""
    _check_chunk_size(chunk_size)
    s, ci = _as_tensors(scores, caption_image)
    n_images, n_captions = s.shape
    right = s[ci, torch.arange(n_captions)]
    # The best-scored correct caption has the best rank, so only it needs ranking.
    best = torch.full((n_images,), -torch.inf, dtype=s.dtype).scatter_reduce(0, ci, right, reduce="amax")
    # Own captions tied with the best are counted by the row-wise >= below but must not count against it.
    own_at_best = torch.bincount(ci[right >= best[ci]], minlength=n_images)
    at_or_above = torch.empty(n_images, dtype=torch.int64)
    for start in range(0, n_images, chunk_size):
        stop = min(start + chunk_size, n_images)
        at_or_above[start:stop] = (s[start:stop] >= best[start:stop, None]).sum(dim=1)
    return (at_or_above - own_at_best).numpy()


def recall_from_ranks(ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[int, float]:
    """Recall@K in percent: the share of queries whose right answer is among the top K."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise AladinError("cannot compute recall from zero queries")
    out: dict[int, float] = {}
    for k in ks:
        if k < 1:
            raise AladinError(f"recall@K needs K >= 1, got {k}")
        out[k] = float(100.0 * np.mean(ranks < k))
    return out


def _metrics_from_ranks(i2t: np.ndarray, t2i: np.ndarray, ks: Iterable[int]) -> dict[str, float]:
    ks = tuple(ks)
    metrics = {f"i2t_r{k}": v for k, v in recall_from_ranks(i2t, ks).items()}
    metrics.update({f"t2i_r{k}": v for k, v in recall_from_ranks(t2i, ks).items()})
    metrics["rsum"] = float(sum(metrics.values()))
    return metrics


def retrieval_metrics(
    scores: np.ndarray, caption_image: np.ndarray, ks: Iterable[int] = DEFAULT_KS
) -> dict[str, float]:
    """Both directions' recall@K and their sum (rsum), the single number papers rank models by."""
    return _metrics_from_ranks(i2t_ranks(scores, caption_image), t2i_ranks(scores, caption_image), ks)


def fold_metrics(
    scores: np.ndarray,
    caption_image: np.ndarray,
    n_folds: int = COCO_1K_FOLDS,
    ks: Iterable[int] = DEFAULT_KS,
) -> dict[str, float]:
    """The "1K" protocol: mean metrics over contiguous image folds, each searched on its own."""
    scores = np.asarray(scores)
    caption_image = np.asarray(caption_image)
    n_images = scores.shape[0] if scores.ndim == 2 else 0
    if n_folds < 1 or n_images % n_folds != 0 or n_images < n_folds:
        raise AladinError(f"cannot split {n_images} images into {n_folds} equal folds")
    ks = tuple(ks)
    size = n_images // n_folds
    per_fold = []
    for fold in range(n_folds):
        first = fold * size
        keep = (caption_image >= first) & (caption_image < first + size)
        per_fold.append(
            retrieval_metrics(scores[first : first + size][:, keep], caption_image[keep] - first, ks)
        )
    return {key: float(np.mean([m[key] for m in per_fold])) for key in per_fold[0]}


def _protocols(scores: np.ndarray, caption_image: np.ndarray, full: dict[str, float]) -> dict[str, dict]:
    protocols: dict[str, dict] = {"full": full}
    if np.shape(scores)[0] == COCO_5K_IMAGES:
        protocols["1k_folds"] = fold_metrics(scores, caption_image, COCO_1K_FOLDS)
    return protocols


def evaluate_protocols(scores: np.ndarray, caption_image: np.ndarray) -> dict[str, dict]:
    """Every protocol the test set supports: always "full"; "1k_folds" too for COCO's 5,000 images."""
    return _protocols(scores, caption_image, retrieval_metrics(scores, caption_image))


@dataclass
class ScorerResult:
    """One scorer's evaluation, kept together so tables, JSON and plots all report the same run."""

    name: str
    metrics: dict[str, float]
    protocols: dict[str, dict]
    seconds_per_query: float
    t2i_ranks: np.ndarray | None = field(default=None, repr=False)
    i2t_ranks: np.ndarray | None = field(default=None, repr=False)
    notes: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready view; the rank arrays are left out because they are large and derivable."""
        return {
            "name": self.name,
            "metrics": self.metrics,
            "protocols": self.protocols,
            "seconds_per_query": self.seconds_per_query,
            "notes": self.notes,
        }


def evaluate_scorer(
    name: str,
    score_fn: Callable[[], np.ndarray],
    caption_image: np.ndarray,
    num_queries: int | None = None,
    notes: str = "",
) -> ScorerResult:
    """Time `score_fn` (which returns the [I, T] matrix) and evaluate it under every protocol.

    seconds_per_query is the scoring time divided by the number of queries, which counts every
    caption (text-to-image) and every image (image-to-text); `num_queries` defaults to T + I.
    """
    start = time.perf_counter()
    scores = np.asarray(score_fn())
    elapsed = time.perf_counter() - start
    if scores.ndim != 2:
        raise AladinError(f"{name}: score_fn must return an [images, captions] matrix, got {scores.shape}")
    if num_queries is None:
        num_queries = scores.shape[0] + scores.shape[1]
    if num_queries < 1:
        raise AladinError(f"{name}: num_queries must be >= 1, got {num_queries}")
    i2t = i2t_ranks(scores, caption_image)
    t2i = t2i_ranks(scores, caption_image)
    full = _metrics_from_ranks(i2t, t2i, DEFAULT_KS)
    return ScorerResult(
        name=name,
        metrics=full,
        protocols=_protocols(scores, caption_image, full),
        seconds_per_query=elapsed / num_queries,
        t2i_ranks=t2i,
        i2t_ranks=i2t,
        notes=notes,
    )
