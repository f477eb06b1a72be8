"""Cached encoder features as tensors, and batched embedding of a whole split with a model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from aladin.model.aladin import AladinModel, ImageEmbedding, TextEmbedding
from aladin.model.layers import masked_mean


@dataclass
class FeatureTensors:
    """One split's frozen features in memory (float16 to halve RAM; cast to float32 per batch)."""

    regions: torch.Tensor  # [N, R, Di]
    boxes: torch.Tensor  # [N, R, 5]
    region_mask: torch.Tensor  # [N, R]
    tokens: torch.Tensor  # [T, L, Dt]
    attention_mask: torch.Tensor  # [T, L]
    token_mask: torch.Tensor  # [T, L]
    caption_image: torch.Tensor  # [T]

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureTensors:
        """Copy the cache's (memory-mapped) arrays into RAM once, so training epochs are not I/O bound."""

        def tensor(name: str) -> torch.Tensor:
            return torch.from_numpy(np.array(arrays[name]))  # a private, writable copy in RAM

        return cls(
            regions=tensor("regions").half(),
            boxes=tensor("boxes").float(),
            region_mask=tensor("region_mask").bool(),
            tokens=tensor("tokens").half(),
            attention_mask=tensor("attention_mask").bool(),
            token_mask=tensor("token_mask").bool(),
            caption_image=tensor("caption_image").long(),
        )

    @property
    def num_images(self) -> int:
        return self.regions.shape[0]

    @property
    def num_captions(self) -> int:
        return self.tokens.shape[0]

    def image_batch(self, idx: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        return (
            self.regions[idx].to(device, torch.float32),
            self.boxes[idx].to(device),
            self.region_mask[idx].to(device),
        )

    def text_masks(
        self, idx: torch.Tensor, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention mask, scored-word mask) of these captions, padding shared by the whole batch trimmed."""
        width = int(self.attention_mask[idx].sum(dim=1).max()) if len(idx) else 1
        return self.attention_mask[idx, :width].to(device), self.token_mask[idx, :width].to(device)

    def text_batch(self, idx: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        attention, scored = self.text_masks(idx, device)
        return self.tokens[idx, : attention.shape[1]].to(device, torch.float32), attention, scored


@torch.inference_mode()
def embed_split(
    model: AladinModel, feats: FeatureTensors, batch_size: int = 256, with_global: bool = True
) -> tuple[ImageEmbedding, TextEmbedding]:
    """Embed every image and caption of a split (words padded to the split's longest caption)."""
    model.eval()
    device = next(model.parameters()).device
    images = [
        model.encode_image(
            *feats.image_batch(torch.arange(s, min(s + batch_size, feats.num_images)), device),
            with_global=with_global,
        )
        for s in range(0, feats.num_images, batch_size)
    ]
    width = int(feats.attention_mask.sum(dim=1).max())
    texts = []
    for s in range(0, feats.num_captions, batch_size):
        idx = torch.arange(s, min(s + batch_size, feats.num_captions))
        tokens, attention, scored = feats.text_batch(idx, device)
        emb = model.encode_text(tokens, attention, scored, with_global=with_global)
        pad = width - emb.words.shape[1]
        texts.append(
            TextEmbedding(F.pad(emb.words, (0, 0, 0, pad)), F.pad(emb.word_mask, (0, pad)), emb.global_vector)
        )
    image = ImageEmbedding(
        *(torch.cat([getattr(e, f) for e in images]) for f in ("regions", "region_mask", "global_vector"))
    )
    text = TextEmbedding(
        *(torch.cat([getattr(e, f) for e in texts]) for f in ("words", "word_mask", "global_vector"))
    )
    return image, text


def mean_pooled(feats: FeatureTensors, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of real regions per image and of scored words per caption: the linear baseline's whole input."""
    images = torch.cat(
        [
            masked_mean(feats.regions[s : s + batch].float(), feats.region_mask[s : s + batch])
            for s in range(0, feats.num_images, batch)
        ]
    )
    texts = torch.cat(
        [
            masked_mean(feats.tokens[s : s + batch].float(), feats.token_mask[s : s + batch])
            for s in range(0, feats.num_captions, batch)
        ]
    )
    return images, texts
