"""Cached features in memory: a training step draws one of each image's cached views."""

from __future__ import annotations

import dataclasses

import torch
from feature_fixtures import make_features


def with_views(feats, views: int = 2, shift: float = 10.0):
    """Views that are told apart by value: view v adds v × shift to every region feature."""
    extra = torch.stack([feats.regions.float() + v * shift for v in range(1, views + 1)], dim=1)
    return dataclasses.replace(feats, view_regions=extra.half())


def test_a_training_batch_draws_each_image_s_view_and_evaluation_sees_the_picture():
    feats = with_views(make_features(8, seed=0), views=2)
    idx = torch.arange(8)
    original = feats.regions[idx].float()
    assert torch.equal(feats.image_batch(idx)[0], original)  # no generator: the picture itself
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        regions = feats.image_batch(idx, generator=generator)[0]
        offset = (regions - original).mean(dim=(1, 2)) / 10.0  # 0, 1 or 2 per image: which view it got
        assert torch.allclose(offset, offset.round(), atol=0.05)
        seen |= set(offset.round().long().tolist())
    assert seen == {0, 1, 2}


def test_without_views_a_training_batch_is_the_picture_and_draws_nothing():
    feats = make_features(8, seed=0)
    generator = torch.Generator().manual_seed(0)
    regions = feats.image_batch(torch.arange(8), generator=generator)[0]
    assert torch.equal(regions, feats.regions.float())
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())
