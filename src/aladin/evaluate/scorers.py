"""The scorers every results table compares, each timed the same way: alignment head over all pairs,
matching head (kNN), matching head + alignment re-rank of its top k, and the linear global baseline."""

from __future__ import annotations

import time

import numpy as np
import torch

from aladin.evaluate.metrics import (
    COCO_1K_FOLDS,
    ScorerResult,
    evaluate_protocols,
    i2t_ranks,
    retrieval_metrics,
    t2i_ranks,
)
from aladin.model import AladinModel, ImageEmbedding, LinearGlobalModel, TextEmbedding
from aladin.model.alignment import chunked_region_word_scores, paired_region_word_scores
from aladin.model.features import FeatureTensors, mean_pooled


def validation_rsum(scores: torch.Tensor | np.ndarray, caption_image: torch.Tensor | np.ndarray) -> float:
    """The model-selection number: rsum on the validation split."""
    return retrieval_metrics(_numpy(scores), _numpy(caption_image))["rsum"]


@torch.inference_mode()
def alignment_matrix(model: AladinModel, image: ImageEmbedding, text: TextEmbedding) -> torch.Tensor:
    """Teacher scores of all pairs, chunked to bound memory."""
    return chunked_region_word_scores(
        image.regions, image.region_mask, text.words, text.word_mask, model.config.model.word_aggregation
    )


@torch.inference_mode()
def matching_matrix(image: ImageEmbedding, text: TextEmbedding) -> torch.Tensor:
    return image.global_vector @ text.global_vector.T


@torch.inference_mode()
def rerank_matrices(
    model: AladinModel,
    image: ImageEmbedding,
    text: TextEmbedding,
    first_stage: torch.Tensor,
    k: int,
    pair_batch: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-score each query's top-k first-stage candidates with the alignment head.

    Returns (text→image, image→text) score matrices in which the re-ranked candidates sit above every other
    item (ordered by the alignment score) and the rest keep their first-stage order.
    """
    aggregation = model.config.model.word_aggregation
    num_images, num_texts = first_stage.shape
    # Places candidates above all non-candidates while keeping float32 precision for their own order.
    lift = 2 * float(first_stage.abs().max()) + 2.0
    t2i = first_stage.clone()
    k_img = min(k, num_images)
    cand = first_stage.topk(k_img, dim=0).indices.T  # [T, k] images per caption
    flat_img, flat_txt = cand.reshape(-1), torch.arange(num_texts).repeat_interleave(k_img)
    t2i[flat_img, flat_txt] = lift + _paired(image, text, flat_img, flat_txt, aggregation, pair_batch)
    i2t = first_stage.clone()
    k_txt = min(k, num_texts)
    cand = first_stage.topk(k_txt, dim=1).indices  # [I, k] captions per image
    flat_img, flat_txt = torch.arange(num_images).repeat_interleave(k_txt), cand.reshape(-1)
    i2t[flat_img, flat_txt] = lift + _paired(image, text, flat_img, flat_txt, aggregation, pair_batch)
    return t2i, i2t


def _paired(
    image: ImageEmbedding,
    text: TextEmbedding,
    img_idx: torch.Tensor,
    txt_idx: torch.Tensor,
    aggregation: str,
    batch: int,
) -> torch.Tensor:
    out = torch.empty(len(img_idx))
    for s in range(0, len(img_idx), batch):
        i, t = img_idx[s : s + batch], txt_idx[s : s + batch]
        out[s : s + batch] = paired_region_word_scores(
            image.regions[i], image.region_mask[i], text.words[t], text.word_mask[t], aggregation
        )
    return out


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _result(
    name: str,
    t2i: torch.Tensor,
    i2t: torch.Tensor,
    caption_image: np.ndarray,
    seconds: float,
    notes: str = "",
) -> ScorerResult:
    """Ranks per direction (re-ranking gives a different matrix per direction), then every protocol."""
    t2i_np, i2t_np = _numpy(t2i), _numpy(i2t)
    protocols = evaluate_protocols(t2i_np, caption_image)
    if i2t is not t2i:
        i2t_protocols = evaluate_protocols(i2t_np, caption_image)
        for name_, metrics in protocols.items():
            metrics.update({k: v for k, v in i2t_protocols[name_].items() if k.startswith("i2t")})
            metrics["rsum"] = sum(v for k, v in metrics.items() if k != "rsum")
    num_queries = t2i.shape[0] + t2i.shape[1]
    return ScorerResult(
        name=name,
        metrics=protocols["full"],
        protocols=protocols,
        seconds_per_query=seconds / num_queries,
        t2i_ranks=t2i_ranks(t2i_np, caption_image),
        i2t_ranks=i2t_ranks(i2t_np, caption_image),
        notes=notes,
    )


def score_alignment(
    model: AladinModel,
    image: ImageEmbedding,
    text: TextEmbedding,
    caption_image: np.ndarray,
    name: str = "alignment head (all pairs)",
) -> ScorerResult:
    start = time.perf_counter()
    scores = alignment_matrix(model, image, text)
    return _result(name, scores, scores, caption_image, time.perf_counter() - start)


def score_matching(
    image: ImageEmbedding, text: TextEmbedding, caption_image: np.ndarray, name: str
) -> ScorerResult:
    start = time.perf_counter()
    scores = matching_matrix(image, text)
    return _result(name, scores, scores, caption_image, time.perf_counter() - start)


def score_rerank(
    model: AladinModel,
    image: ImageEmbedding,
    text: TextEmbedding,
    caption_image: np.ndarray,
    k: int,
    name: str | None = None,
) -> ScorerResult:
    """Matching-head kNN, then the alignment head on each query's top k (per 1K fold too, at COCO 5K)."""
    start = time.perf_counter()
    first_stage = matching_matrix(image, text)
    t2i, i2t = rerank_matrices(model, image, text, first_stage, k)
    result = _result(
        name or f"matching + re-rank top {k}", t2i, i2t, caption_image, time.perf_counter() - start
    )
    if "1k_folds" in result.protocols:  # each fold re-ranks its own short lists, not the 5K ones
        size = first_stage.shape[0] // COCO_1K_FOLDS
        folds = []
        for fold in range(COCO_1K_FOLDS):
            imgs = torch.arange(fold * size, (fold + 1) * size)
            caps = torch.from_numpy(
                np.flatnonzero((caption_image >= fold * size) & (caption_image < (fold + 1) * size))
            )
            sub_image = ImageEmbedding(
                image.regions[imgs], image.region_mask[imgs], image.global_vector[imgs]
            )
            sub_text = TextEmbedding(text.words[caps], text.word_mask[caps], text.global_vector[caps])
            f_t2i, f_i2t = rerank_matrices(model, sub_image, sub_text, first_stage[imgs][:, caps], k)
            owners = caption_image[caps.numpy()] - fold * size
            folds.append(_result("fold", f_t2i, f_i2t, owners, 0.0).metrics)
        result.protocols["1k_folds"] = {key: float(np.mean([m[key] for m in folds])) for key in folds[0]}
    return result


@torch.inference_mode()
def score_linear_baseline(
    baseline: LinearGlobalModel, feats: FeatureTensors, name: str = "linear global baseline"
) -> ScorerResult:
    baseline.eval()
    pooled_images, pooled_texts = mean_pooled(feats)  # chunked: no float32 copy of the whole split
    img, txt = baseline.project_image(pooled_images), baseline.project_text(pooled_texts)
    start = time.perf_counter()
    scores = img @ txt.T
    return _result(name, scores, scores, _numpy(feats.caption_image), time.perf_counter() - start)
