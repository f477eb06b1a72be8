"""Shared small data: features with real structure, so that training has something to learn."""

from __future__ import annotations

import torch

from aladin.config import AladinConfig, ModelConfig
from aladin.model.features import FeatureTensors

IMAGE_DIM, TEXT_DIM, NUM_CONCEPTS = 32, 24, 24


def make_features(
    num_images: int,
    seed: int,
    captions_per_image: int = 2,
    regions: int = 6,
    words: int = 4,
    noise: float = 0.3,
) -> FeatureTensors:
    """Each image holds `regions` concepts; each caption names `words` of them (in the text feature space)."""
    concepts = torch.Generator().manual_seed(1234)
    image_protos = torch.randn(NUM_CONCEPTS, IMAGE_DIM, generator=concepts)
    text_protos = torch.randn(NUM_CONCEPTS, TEXT_DIM, generator=concepts)
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(NUM_CONCEPTS, generator=g)[:regions] for _ in range(num_images)])
    region_feats = image_protos[ids] + noise * torch.randn(num_images, regions, IMAGE_DIM, generator=g)
    owner = torch.arange(num_images).repeat_interleave(captions_per_image)
    picks = torch.stack([torch.randperm(regions, generator=g)[:words] for _ in range(len(owner))])
    named = ids[owner.unsqueeze(1), picks]
    length = words + 2  # [CLS] words [SEP]
    tokens = torch.randn(len(owner), length, TEXT_DIM, generator=g) * noise
    tokens[:, 1 : words + 1] += text_protos[named]
    attention = torch.ones(len(owner), length, dtype=torch.bool)
    scored = attention.clone()
    scored[:, 0] = scored[:, -1] = False
    boxes = torch.rand(num_images, regions, 5, generator=g)
    return FeatureTensors(
        region_feats.half(),
        boxes,
        torch.ones(num_images, regions, dtype=torch.bool),
        tokens.half(),
        attention,
        scored,
        owner,
    )


def tiny_config() -> AladinConfig:
    return AladinConfig(
        model=ModelConfig(
            image_feature_dim=IMAGE_DIM,
            text_feature_dim=TEXT_DIM,
            embed_dim=32,
            global_dim=32,
            ff_dim=64,
            num_heads=2,
            dropout=0.1,
        )
    )
