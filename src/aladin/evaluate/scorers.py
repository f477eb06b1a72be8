"""The scorers every results table compares, each timed the same way: alignment head over all pairs,
matching head (kNN), matching head + alignment re-rank of its top k, and the linear global baseline."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

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
from aladin.model.alignment import matching_scores, paired_region_word_scores, region_word_scores
from aladin.model.features import FeatureTensors, mean_pooled
from aladin.model.rerank import CANDIDATE_DEPTHS, CANDIDATE_FUSIONS, LEGACY_DEPTH, RerankSetting


def validation_rsum(scores: torch.Tensor | np.ndarray, caption_image: torch.Tensor | np.ndarray) -> float:
    """The model-selection number: rsum on the validation split."""
    return retrieval_metrics(_numpy(scores), _numpy(caption_image))["rsum"]


@torch.inference_mode()
def alignment_matrix(model: AladinModel, image: ImageEmbedding, text: TextEmbedding) -> torch.Tensor:
    """Teacher scores of all pairs of encoded images and texts, chunked to bound memory."""
    aggregation = model.config.model.word_aggregation
    return region_word_scores(
        image.regions, image.region_mask, text.words, text.word_mask, aggregation, max_elements=2**26
    )


@torch.inference_mode()
def matching_matrix(image: ImageEmbedding, text: TextEmbedding) -> torch.Tensor:
    """Student scores of all pairs of encoded images and texts."""
    return matching_scores(image.global_vector, text.global_vector)


@dataclass
class _Shortlists:
    """Each query's top-k first-stage candidates (best first) and their alignment scores, per direction."""

    first_stage: torch.Tensor  # [I, T]
    candidates: tuple[torch.Tensor, torch.Tensor]  # [T, k] images per caption, [I, k] captions per image
    aligned: tuple[torch.Tensor, torch.Tensor]  # alignment scores of those pairs, same shapes

    def matrices(self, k: int, fusion: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(text→image, image→text) scores: the top k of each query, re-scored by the alignment head plus
        `fusion` × the first-stage score, sit above every other item, which keeps its first-stage order."""
        # Places candidates above all non-candidates while keeping float32 precision for their own order.
        top_aligned = max(float(a.abs().max()) if a.numel() else 0.0 for a in self.aligned)
        lift = (1 + abs(fusion)) * float(self.first_stage.abs().max()) + top_aligned + 1.0
        out = []
        for direction, (cand, aligned) in enumerate(zip(self.candidates, self.aligned, strict=True)):
            cand, aligned = cand[:, :k], aligned[:, :k]
            img, txt = _pairs(direction, cand)
            scores = self.first_stage.clone()
            scores[img, txt] = lift + aligned.reshape(-1) + fusion * self.first_stage[img, txt]
            out.append(scores)
        return out[0], out[1]


def _pairs(direction: int, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[Q, k] candidates per query → flat (image, caption) indices; queries are captions in direction 0
    (text→image) and images in direction 1."""
    owners = torch.arange(cand.shape[0]).repeat_interleave(cand.shape[1])
    return (cand.reshape(-1), owners) if direction == 0 else (owners, cand.reshape(-1))


def _shortlists(
    model: AladinModel, image: ImageEmbedding, text: TextEmbedding, first_stage: torch.Tensor, k: int
) -> _Shortlists:
    aggregation = model.config.model.word_aggregation
    candidates, aligned = [], []
    for direction in (0, 1):  # 0: images per caption (text→image); 1: captions per image (image→text)
        depth = min(k, first_stage.shape[direction])
        cand = first_stage.topk(depth, dim=direction).indices
        cand = cand.T if direction == 0 else cand
        img, txt = _pairs(direction, cand)
        candidates.append(cand)
        aligned.append(_paired(image, text, img, txt, aggregation).view(cand.shape))
    return _Shortlists(first_stage, (candidates[0], candidates[1]), (aligned[0], aligned[1]))


@torch.inference_mode()
def rerank_matrices(
    model: AladinModel,
    image: ImageEmbedding,
    text: TextEmbedding,
    first_stage: torch.Tensor,
    k: int,
    fusion: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-score each query's top-k first-stage candidates with the alignment head, plus `fusion` times
    their first-stage score (0: the alignment head alone); see `_Shortlists.matrices`."""
    return _shortlists(model, image, text, first_stage, k).matrices(k, fusion)


@torch.inference_mode()
def choose_rerank(
    model: AladinModel,
    image: ImageEmbedding,
    text: TextEmbedding,
    caption_image: np.ndarray,
    depths: Sequence[int] = (*CANDIDATE_DEPTHS, LEGACY_DEPTH),
    fusions: Sequence[float] = CANDIDATE_FUSIONS,
) -> RerankSetting:
    """Grid over re-rank depth and fusion weight on a validation split: on by default only where it helps."""
    first_stage = matching_matrix(image, text)
    matching = validation_rsum(first_stage, caption_image)
    shortlists = _shortlists(model, image, text, first_stage, max(depths))  # aligned once, sliced per k
    best = (-1.0, 0, 0.0)
    for k in depths:
        for fusion in fusions:
            t2i, i2t = shortlists.matrices(k, fusion)
            t2i_part = retrieval_metrics(_numpy(t2i), caption_image)  # the full split only: no 1K folds here
            i2t_part = retrieval_metrics(_numpy(i2t), caption_image)
            rsum = sum(v for key, v in t2i_part.items() if key.startswith("t2i")) + sum(
                v for key, v in i2t_part.items() if key.startswith("i2t")
            )
            best = max(best, (rsum, k, fusion), key=lambda entry: entry[0])
    rsum, k, fusion = best
    return RerankSetting.chosen(k, fusion, rsum, matching)


def _paired(
    image: ImageEmbedding,
    text: TextEmbedding,
    img_idx: torch.Tensor,
    txt_idx: torch.Tensor,
    aggregation: str,
    batch: int = 8192,
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
    fusion: float = 0.0,
) -> ScorerResult:
    """Matching-head kNN, then the alignment head (fused with the kNN score when `fusion` > 0) on each query's
    top k (per 1K fold too, at COCO 5K)."""
    start = time.perf_counter()
    first_stage = matching_matrix(image, text)
    t2i, i2t = rerank_matrices(model, image, text, first_stage, k, fusion)
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
            f_t2i, f_i2t = rerank_matrices(model, sub_image, sub_text, first_stage[imgs][:, caps], k, fusion)
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
    scores = matching_scores(img, txt)
    return _result(name, scores, scores, _numpy(feats.caption_image), time.perf_counter() - start)


@torch.inference_mode()
def score_encoder_embeddings(
    feats: FeatureTensors, name: str = "encoders' own embeddings (zero training)"
) -> ScorerResult | None:
    """Cosine similarity of the encoders' own embeddings in the space they share (CLIP's similarity): what the
    user's encoders give before aladin trains anything. None when the cache has none (no shared space)."""
    if feats.image_projected is None or feats.text_projected is None:
        return None
    img = torch.nn.functional.normalize(feats.image_projected.float(), dim=-1)
    txt = torch.nn.functional.normalize(feats.text_projected.float(), dim=-1)
    start = time.perf_counter()
    scores = img @ txt.T
    return _result(name, scores, scores, _numpy(feats.caption_image), time.perf_counter() - start)


@torch.inference_mode()
def served_top_k(
    model: AladinModel,
    image: ImageEmbedding,
    text: TextEmbedding,
    k: int,
    depth: int,
    fusion: float,
) -> dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]]:
    """What a search serves for every query of a split, as `Searcher.search_encoded` scores it: per (direction
    0 text→image / 1 image→text, re-ranked or not), each query's top k items [Q, k] and their served scores
    [Q, k] — the kNN score alone, or the alignment score plus `fusion` × kNN of the top max(k, depth) kNN
    candidates."""
    first_stage = matching_matrix(image, text)
    shortlists = _shortlists(model, image, text, first_stage, max(k, depth))
    out = {}
    for direction in (0, 1):
        knn = first_stage.T if direction == 0 else first_stage  # [queries, items]
        top = knn.topk(min(k, knn.shape[1]), dim=1)
        out[direction, False] = (top.indices, top.values)
        cand, aligned = shortlists.candidates[direction], shortlists.aligned[direction]
        served = aligned + fusion * knn.gather(1, cand)
        best = served.topk(min(k, served.shape[1]), dim=1)
        out[direction, True] = (cand.gather(1, best.indices), best.values)
    return out
