from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from feature_fixtures import tiny_config

from aladin.evaluate.scorers import alignment_matrix, choose_rerank, rerank_matrices, score_rerank
from aladin.model import AladinModel, ImageEmbedding, TextEmbedding


def _embeddings(num_images=12, num_texts=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    regions = F.normalize(torch.randn(num_images, 5, 32, generator=g), dim=-1)
    words = F.normalize(torch.randn(num_texts, 4, 32, generator=g), dim=-1)
    image = ImageEmbedding(
        regions,
        torch.ones(num_images, 5, dtype=torch.bool),
        F.normalize(torch.randn(num_images, 8, generator=g), dim=-1),
    )
    text = TextEmbedding(
        words,
        torch.ones(num_texts, 4, dtype=torch.bool),
        F.normalize(torch.randn(num_texts, 8, generator=g), dim=-1),
    )
    return image, text


def test_rerank_orders_each_querys_candidates_by_the_alignment_head():
    model = AladinModel(tiny_config())
    image, text = _embeddings()
    first = image.global_vector @ text.global_vector.T
    full = alignment_matrix(model, image, text)
    k = 4
    t2i, i2t = rerank_matrices(model, image, text, first, k)
    for t in range(first.shape[1]):
        candidates = set(first[:, t].topk(k).indices.tolist())
        order = t2i[:, t].argsort(descending=True).tolist()
        assert set(order[:k]) == candidates  # the short list stays on top ...
        assert order[:k] == sorted(candidates, key=lambda i: -full[i, t].item())  # ... in teacher order
        rest = [i for i in first[:, t].argsort(descending=True).tolist() if i not in candidates]
        assert order[k:] == rest  # the others keep the first-stage order
    for i in range(first.shape[0]):
        candidates = set(first[i].topk(k).indices.tolist())
        order = i2t[i].argsort(descending=True).tolist()
        assert order[:k] == sorted(candidates, key=lambda t: -full[i, t].item())


def test_rerank_of_everything_equals_the_alignment_head():
    model = AladinModel(tiny_config())
    image, text = _embeddings()
    owner = np.repeat(np.arange(12), 2)
    full = score_rerank(model, image, text, owner, k=24)
    first = image.global_vector @ text.global_vector.T
    t2i, i2t = rerank_matrices(model, image, text, first, 24)
    direct = alignment_matrix(model, image, text)
    assert torch.equal(t2i.argsort(dim=0), direct.argsort(dim=0))
    assert torch.equal(i2t.argsort(dim=1), direct.argsort(dim=1))
    assert full.metrics["rsum"] >= 0


def test_rerank_1k_folds_rerank_each_folds_own_short_lists():
    model = AladinModel(tiny_config())
    image, text = _embeddings(num_images=5000, num_texts=5000, seed=1)
    owner = np.arange(5000)
    result = score_rerank(model, image, text, owner, k=3)
    expected = []
    for fold in range(5):
        part = slice(fold * 1000, (fold + 1) * 1000)
        sub_image = ImageEmbedding(image.regions[part], image.region_mask[part], image.global_vector[part])
        sub_text = TextEmbedding(text.words[part], text.word_mask[part], text.global_vector[part])
        expected.append(score_rerank(model, sub_image, sub_text, np.arange(1000), k=3).metrics["rsum"])
    assert result.protocols["1k_folds"]["rsum"] == pytest.approx(np.mean(expected))
    assert result.protocols["1k_folds"]["rsum"] != pytest.approx(result.metrics["rsum"])


def test_fused_rerank_adds_the_weighted_first_stage_score():
    model = AladinModel(tiny_config())
    image, text = _embeddings()
    first = image.global_vector @ text.global_vector.T
    full = alignment_matrix(model, image, text)
    k, fusion = 5, 3.0
    t2i, _ = rerank_matrices(model, image, text, first, k, fusion)
    for t in range(first.shape[1]):
        candidates = first[:, t].topk(k).indices.tolist()
        fused = {i: full[i, t].item() + fusion * first[i, t].item() for i in candidates}
        assert t2i[:, t].argsort(descending=True)[:k].tolist() == sorted(candidates, key=lambda i: -fused[i])


def _aligned_pairs(good_teacher: bool):
    """Each image's two captions share its region vectors; the global vectors are either informative or noise,
    and the words either copy the regions (a teacher that knows) or are noise (one that does not)."""
    image, text = _embeddings(num_images=12, num_texts=24, seed=3)
    owner = np.repeat(np.arange(12), 2)
    if good_teacher:
        text.words[:] = image.regions[owner, :4]
    else:
        text.global_vector[:] = image.global_vector[owner]
    return image, text, owner


def test_choose_rerank_turns_reranking_on_only_where_validation_says_it_helps():
    model = AladinModel(tiny_config())
    image, text, owner = _aligned_pairs(good_teacher=True)
    helps = choose_rerank(model, image, text, owner, depths=(4, 12), fusions=(0.0, 1.0))
    assert helps.helps and helps.default_depth in (4, 12) and helps.val_rsum > helps.matching_val_rsum
    image, text, owner = _aligned_pairs(good_teacher=False)
    hurts = choose_rerank(model, image, text, owner, depths=(4, 12), fusions=(0.0,))
    assert not hurts.helps and hurts.default_depth == 0


def test_reranked_candidates_stay_on_top_whatever_the_range_of_alignment_scores():
    config = tiny_config()
    # sums over words reach far beyond the kNN scores' ±1
    config = replace(config, model=replace(config.model, word_aggregation="sum"))
    model = AladinModel(config)
    image, text = _embeddings()
    image.regions[:] = image.regions[0, 0]
    text.words[:] = -3 * image.regions[0, 0]  # every pair scores -12: far below any kNN score
    first = image.global_vector @ text.global_vector.T
    t2i, i2t = rerank_matrices(model, image, text, first, 4, fusion=0.5)
    for t in range(first.shape[1]):
        assert set(t2i[:, t].topk(4).indices.tolist()) == set(first[:, t].topk(4).indices.tolist())
    for i in range(first.shape[0]):
        assert set(i2t[i].topk(4).indices.tolist()) == set(first[i].topk(4).indices.tolist())
