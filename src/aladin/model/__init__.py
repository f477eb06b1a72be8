"""Model heads and losses: alignment head (teacher), matching head (student), linear global baseline."""

from aladin.model.aladin import AladinModel, ImageEmbedding, TextEmbedding
from aladin.model.alignment import region_word_scores
from aladin.model.baseline import LinearGlobalModel
from aladin.model.losses import distillation_loss, hardest_negative_hinge_loss, infonce_loss

__all__ = [
    "AladinModel",
    "ImageEmbedding",
    "LinearGlobalModel",
    "TextEmbedding",
    "distillation_loss",
    "hardest_negative_hinge_loss",
    "infonce_loss",
    "region_word_scores",
]
