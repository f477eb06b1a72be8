"""Encoder outputs → model embeddings in the store's packed layout (what building and adding both need)."""

from __future__ import annotations

import numpy as np
import torch

from aladin.encoders.image import RegionBatch
from aladin.encoders.text import TokenBatch
from aladin.index.store import EncodedChunk
from aladin.model.aladin import AladinModel


def model_device(model: AladinModel) -> torch.device:
    return next(model.parameters()).device


def _pack(
    global_vectors: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor, boxes: torch.Tensor | None
) -> EncodedChunk:
    """Keep only the real rows (mask True), float16 on the way to disk; the global vectors stay float32."""
    mask = mask.bool()
    return EncodedChunk(
        global_vectors=global_vectors.float().cpu().numpy(),
        rows=rows[mask].to(torch.float16).cpu().numpy(),
        counts=mask.sum(dim=1).cpu().numpy().astype(np.int64),
        boxes=None if boxes is None else boxes[mask].to(torch.float16).cpu().numpy(),
    )


@torch.inference_mode()
def embed_images(model: AladinModel, batch: RegionBatch) -> EncodedChunk:
    """Normalised regions (with their boxes) and the global vector of each image of `batch`."""
    batch = batch.to(model_device(model))
    emb = model.encode_image(batch.regions, batch.boxes, batch.region_mask)
    return _pack(emb.global_vector, emb.regions, emb.region_mask, batch.boxes)


@torch.inference_mode()
def embed_texts(model: AladinModel, batch: TokenBatch) -> EncodedChunk:
    """Normalised scored words and the global vector of each caption of `batch`."""
    batch = batch.to(model_device(model))
    emb = model.encode_text(batch.tokens, batch.attention_mask, batch.token_mask)
    return _pack(emb.global_vector, emb.words, emb.word_mask, None)
