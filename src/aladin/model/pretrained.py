"""The model that ships inside the package, so that a folder of one's own photos can be indexed and searched
offline without training. `benchmarks/default_model.py` trains it and writes it here, with its model card."""

from __future__ import annotations

from pathlib import Path

import torch

from aladin.errors import CheckpointError
from aladin.model.aladin import AladinModel

DEFAULT_MODEL_NAME = "coco-lite0-minilm"
BUNDLED_ROOT = Path(__file__).resolve().with_name("bundled")


def default_model_dir() -> Path:
    """The bundled checkpoint folder (config.json, model.safetensors, MODEL_CARD.md)."""
    folder = BUNDLED_ROOT / DEFAULT_MODEL_NAME
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{folder}: the bundled default model is missing from this installation; pass --model CHECKPOINT"
        )
    return folder


def load_default_model(device: str | torch.device = "cpu") -> AladinModel:
    return AladinModel.from_pretrained(default_model_dir(), device)
