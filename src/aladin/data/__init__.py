"""Datasets: the dataset object, readers, image loading and the synthetic default.

Names are imported on first use, so that light modules (the dataset folder format) load without numpy/PIL.
"""

from __future__ import annotations

from aladin.lazy import lazy_exports

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
__getattr__ = lazy_exports(__name__, _WHERE)
