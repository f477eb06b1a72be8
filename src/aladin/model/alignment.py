"""The model's scores, one function each, used alike by training, evaluation and search:

- `region_word_scores`: the alignment score (TERAN's MrSw: each word finds its best region, words are
  averaged) of every image against every text, chunked on request to bound memory;
- `paired_region_word_scores`: the same score for given (image, text) pairs only (re-ranking);
- `matching_scores`: the matching head's score, the dot product of global vectors, of all pairs (kNN).
"""

from __future__ import annotations

import torch


def region_word_scores(
    regions: torch.Tensor,
    region_mask: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    aggregation: str = "mean",
    max_elements: int | None = None,
) -> torch.Tensor:
    """Score every image against every text.

    regions [I, R, D] and words [T, L, D] are L2-normalised; masks are True for real regions / scored words
    (padding and special tokens False). Returns [I, T]. The same function gives both retrieval directions:
    image→text ranks a column of the result, text→image ranks a row of its transpose. With `max_elements`,
    texts are scored a chunk at a time so the [I, R, T, L] similarities never exceed that many elements
    (float32 out, for large collections); without it, in one go (gradients flow, for training).
    """
    if max_elements is not None:
        return _chunked(regions, region_mask, words, word_mask, aggregation, max_elements)
    num_images, num_regions, dim = regions.shape
    num_texts, num_words, _ = words.shape
    sim = regions.reshape(-1, dim) @ words.reshape(-1, dim).T  # [I*R, T*L]
    sim = sim.view(num_images, num_regions, num_texts, num_words)
    sim = sim.masked_fill(~region_mask.view(num_images, num_regions, 1, 1), float("-inf"))
    best = sim.amax(dim=1)  # best region per word: [I, T, L]
    best = torch.nan_to_num(best, neginf=0.0)  # an image with no region scores 0 rather than -inf
    return _aggregate_words(best, word_mask.view(1, num_texts, num_words), aggregation)


def _chunked(
    regions: torch.Tensor,
    region_mask: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    aggregation: str,
    max_elements: int,
) -> torch.Tensor:
    num_images, num_regions = regions.shape[:2]
    num_texts, num_words = words.shape[:2]
    text_chunk = max(1, max_elements // max(1, num_images * num_regions * num_words))
    out = torch.empty(num_images, num_texts, dtype=torch.float32, device=regions.device)
    for start in range(0, num_texts, text_chunk):
        stop = min(num_texts, start + text_chunk)
        out[:, start:stop] = region_word_scores(
            regions, region_mask, words[start:stop], word_mask[start:stop], aggregation
        ).float()
    return out


def _aggregate_words(best: torch.Tensor, word_mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """Mean (or sum) of each word's best-region score over the scored words; `word_mask` broadcasts to `best`."""
    if aggregation not in ("mean", "sum"):
        raise ValueError(f"word aggregation must be 'mean' or 'sum', got {aggregation!r}")
    total = best.masked_fill(~word_mask, 0.0).sum(dim=-1)
    if aggregation == "sum":
        return total
    return total / word_mask.sum(dim=-1).clamp(min=1)


def word_region_similarity(regions: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Cosine of every word with every region of one pair ([R, D] × [L, D] → [L, R]): the explanation heatmap."""
    return words @ regions.T


def paired_region_word_scores(
    regions: torch.Tensor,
    region_mask: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    aggregation: str = "mean",
) -> torch.Tensor:
    """The same score for P given (image, text) pairs only ([P, R, D] with [P, L, D] → [P]): re-ranking cost."""
    sim = torch.einsum("prd,pld->prl", regions, words)
    sim = sim.masked_fill(~region_mask.unsqueeze(-1), float("-inf"))
    return _aggregate_words(torch.nan_to_num(sim.amax(dim=1), neginf=0.0), word_mask, aggregation)


def matching_scores(image_vectors: torch.Tensor, text_vectors: torch.Tensor) -> torch.Tensor:
    """The matching head's score of every image against every text ([I, G] × [T, G] → [I, T]): the inner
    product a kNN index searches by."""
    return image_vectors @ text_vectors.T
