"""What the synthetic scenes generator makes: apart from it so that the CLI shows its defaults without numpy/PIL."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. `n_*` are image counts; with twins they are rounded up to whole pairs."""

    seed: int = 0
    n_train: int = 1500
    n_val: int = 250
    n_test: int = 1000
    image_size: int = 224
    min_objects: int = 3
    max_objects: int = 4
    captions_per_image: int = 5
    twins: bool = True
    textures: bool = True
    #: Each caption names at most this many of the objects (0 = every object). Partial descriptions of a
    #: cluttered scene are where "each word finds its region" beats one pooled vector per image.
    max_mentioned: int = 2
    #: Every object gets its own shape and colour; when False only (shape, colour) pairs are unique, so
    #: near-miss distractors ("a red square and a blue circle" for "a red circle") are common.
    distinct_attributes: bool = False
