"""Datasets: the dataset object, readers, image loading and the synthetic default."""

from aladin.data.dataset import Dataset, ImageItem

__all__ = ["Dataset", "ImageItem"]
