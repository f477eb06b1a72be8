"""The linear global baseline every results table is read against: linear maps of mean-pooled frozen features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aladin.checkpoint import load_state_strict, read_checkpoint, save_checkpoint
from aladin.errors import CheckpointError
from aladin.model.layers import LogitScale, masked_mean

CHECKPOINT_KIND = "linear-global-baseline"


class LinearGlobalModel(nn.Module):
    """Mean-pool frozen regions / word tokens, one linear projection per side, L2-normalise."""

    def __init__(self, image_feature_dim: int, text_feature_dim: int, dim: int = 256) -> None:
        super().__init__()
        self.image_project = nn.Linear(image_feature_dim, dim)
        self.text_project = nn.Linear(text_feature_dim, dim)
        self.logit_scale = LogitScale()
        self.config = {
            "image_feature_dim": image_feature_dim,
            "text_feature_dim": text_feature_dim,
            "dim": dim,
        }

    def encode_image(self, regions: torch.Tensor, region_mask: torch.Tensor) -> torch.Tensor:
        return self.project_image(masked_mean(regions, region_mask))

    def encode_text(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        return self.project_text(masked_mean(tokens, token_mask))

    def project_image(self, pooled: torch.Tensor) -> torch.Tensor:
        """Already mean-pooled region features → normalised vector (training pools a split once)."""
        return F.normalize(self.image_project(pooled), dim=-1)

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_project(pooled), dim=-1)

    def save_pretrained(self, directory: str | Path, info: dict[str, Any] | None = None) -> Path:
        return save_checkpoint(directory, CHECKPOINT_KIND, self.config, self.state_dict(), info)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LinearGlobalModel:
        config, state, _ = read_checkpoint(directory, CHECKPOINT_KIND)
        try:
            model = cls(**config)
        except TypeError as exc:
            raise CheckpointError(f"{Path(directory) / 'config.json'}: bad baseline config ({exc})") from exc
        load_state_strict(model, state, Path(directory) / "model.safetensors")
        return model.eval()
