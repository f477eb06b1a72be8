"""Frozen encoders (image regions, text word pieces) and the on-disk cache of their outputs."""

from aladin.encoders.cache import CachedSplit, FeatureCache, available_splits, extract_features, load_split
from aladin.encoders.image import (
    EfficientNetGridEncoder,
    ImageEncoder,
    RegionBatch,
    build_image_encoder,
    image_encoder_names,
    register_image_encoder,
)
from aladin.encoders.precomputed import PrecomputedRegionEncoder  # registers the "precomputed" image encoder
from aladin.encoders.text import HFTextEncoder, TextEncoder, TokenBatch, build_text_encoder

__all__ = [
    "CachedSplit",
    "EfficientNetGridEncoder",
    "FeatureCache",
    "HFTextEncoder",
    "ImageEncoder",
    "PrecomputedRegionEncoder",
    "RegionBatch",
    "TextEncoder",
    "TokenBatch",
    "available_splits",
    "build_image_encoder",
    "build_text_encoder",
    "extract_features",
    "image_encoder_names",
    "load_split",
    "register_image_encoder",
]
