"""Datasets: the dataset object, readers, image loading and the synthetic default."""

from aladin.data.dataset import Dataset, ImageItem
from aladin.data.folder import load_dataset_folder, write_dataset_folder
from aladin.data.images import load_image
from aladin.data.synthetic import (
    Scene,
    SceneObject,
    SyntheticConfig,
    generate_synthetic_dataset,
    read_scenes,
)

__all__ = [
    "Dataset",
    "ImageItem",
    "Scene",
    "SceneObject",
    "SyntheticConfig",
    "generate_synthetic_dataset",
    "load_dataset_folder",
    "load_image",
    "read_scenes",
    "write_dataset_folder",
]
