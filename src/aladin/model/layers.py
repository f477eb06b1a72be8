"""The per-modality encoder: projection to a common width plus a small transformer (same design both sides)."""

from __future__ import annotations

import torch
from torch import nn


class SequenceEncoder(nn.Module):
    """Projects frozen backbone features, adds optional position features, contextualises with a transformer."""

    def __init__(
        self,
        in_dim: int,
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        ff_dim: int,
        dropout: float,
        position_dim: int = 0,
    ) -> None:
        super().__init__()
        self.input_norm = nn.LayerNorm(in_dim)
        self.project = nn.Linear(in_dim, embed_dim)
        self.position = (
            nn.Sequential(nn.Linear(position_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))
            if position_dim
            else None
        )
        layer = nn.TransformerEncoderLayer(
            embed_dim, num_heads, ff_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = (
            nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False) if num_layers else None
        )
        self.output_norm = nn.LayerNorm(embed_dim)

    def forward(
        self, features: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """features [B, N, in_dim], attention_mask [B, N] (True = attend) → [B, N, embed_dim]."""
        hidden = self.project(self.input_norm(features))
        if self.position is not None and positions is not None:
            hidden = hidden + self.position(positions)
        if self.transformer is not None:
            hidden = self.transformer(hidden, src_key_padding_mask=~attention_mask)
        return self.output_norm(hidden)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the True positions of mask ([B, N, D], [B, N] → [B, D])."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class LogitScale(nn.Module):
    """A learnable inverse temperature stored in log space (clamped so it cannot run away)."""

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(-torch.log(torch.tensor(init_temperature)))))
        self.max_scale = max_scale

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)
