"""Cached encoder features as tensors, and batched embedding of a whole split with a model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from aladin import distributed
from aladin.encoders.cache import PROJECTED_ARRAYS, VIEW_ARRAY
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
    view_regions: torch.Tensor | None = None  # [N, V-1, R, Di]: augmented views (train split only)
    image_projected: torch.Tensor | None = None  # [N, P]: the encoders' own embeddings in their shared space
    text_projected: torch.Tensor | None = None  # [T, P]

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FeatureTensors:
        """Copy the cache's (memory-mapped) arrays into RAM once, so training epochs are not I/O bound."""

        def tensor(name: str) -> torch.Tensor:
            return torch.from_numpy(np.array(arrays[name]))  # a private, writable copy in RAM

        def optional(name: str) -> torch.Tensor | None:
            return tensor(name).float() if name in arrays else None

        return cls(
            regions=tensor("regions").half(),
            boxes=tensor("boxes").float(),
            region_mask=tensor("region_mask").bool(),
            tokens=tensor("tokens").half(),
            attention_mask=tensor("attention_mask").bool(),
            token_mask=tensor("token_mask").bool(),
            caption_image=tensor("caption_image").long(),
            view_regions=tensor(VIEW_ARRAY).half() if VIEW_ARRAY in arrays else None,
            image_projected=optional(PROJECTED_ARRAYS["images"]),
            text_projected=optional(PROJECTED_ARRAYS["captions"]),
        )

    @property
    def num_images(self) -> int:
        return self.regions.shape[0]

    @property
    def num_captions(self) -> int:
        return self.tokens.shape[0]

    def image_batch(
        self, idx: torch.Tensor, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(regions, boxes, region_mask) as float32/bool; for a training step (`generator` given) each image's
        regions come from a random one of its cached views, the picture itself included."""
        regions = self.regions[idx] if generator is None else self._random_views(idx, generator)
        return (
            regions.to(device, torch.float32),
            self.boxes[idx].to(device),
            self.region_mask[idx].to(device),
        )

    def _random_views(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.view_regions is None:
            return self.regions[idx]  # and no draw, so runs without views keep their random stream
        # the draws of the global batch, this rank keeping its share (as sample_captions does)
        draws = distributed.local_part(torch.rand(len(idx) * distributed.world_size(), generator=generator))
        view = (draws * (self.view_regions.shape[1] + 1)).long()  # 0 = the picture itself
        regions = self.regions[idx].clone()
        cropped = view > 0
        regions[cropped] = self.view_regions[idx[cropped], view[cropped] - 1]
        return regions

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


def mean_regions(regions: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
    """Mean of each image's real regions. A cache for a fine-tuned tail holds the hidden states before it, whose
    token count is not the final regions' (class tokens, two scales' sequences) and all of which are real: their
    mean over every token."""
    if regions.shape[1] != region_mask.shape[1]:
        region_mask = torch.ones(regions.shape[:2], dtype=torch.bool, device=regions.device)
    return masked_mean(regions, region_mask)


def mean_pooled(feats: FeatureTensors, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of real regions per image and of scored words per caption: the linear baseline's whole input."""
    images = torch.cat(
        [
            mean_regions(feats.regions[s : s + batch].float(), feats.region_mask[s : s + batch])
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
