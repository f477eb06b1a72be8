"""Datasets: the dataset object, readers, image loading and the synthetic default.

Names are imported on first use, so that light modules (the dataset folder format) load without numpy/PIL.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Dataset": "dataset",
    "ImageItem": "dataset",
    "load_dataset_folder": "folder",
    "write_dataset_folder": "folder",
    "load_image": "images",
    "Scene": "synthetic",
    "SceneObject": "synthetic",
    "SyntheticConfig": "synthetic",
    "generate_synthetic_dataset": "synthetic",
    "read_scenes": "synthetic",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
