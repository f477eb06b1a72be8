"""The pointing game: does a word's explanation map peak inside the object the word names?

On the synthetic scenes the generator knows every object's box, so the game is exact: for each caption word
that names an object (the colour or the shape of a "colour shape" phrase), the map's peak (the centre of the
best-scoring region) hits when it lies inside that object's box. Chance is the share of the image the target
boxes cover, the hit rate of a peak thrown uniformly at random; a useful explanation scores several times it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aladin.data.synthetic import COLOURS, MARKER_FILE, SHAPES, SceneObject, read_scenes
from aladin.errors import AladinError
from aladin.fileio import read_json

#: [x0, y0, x1, y1] in 0..1 of the image.
Box = tuple[float, float, float, float]


@dataclass
class PointingResult:
    """One scorer's game: how many named-object words it pointed at, of how many, against chance."""

    scorer: str
    words: int = 0
    hits: int = 0
    chance_sum: float = 0.0  # the targets' area share, summed over the words
    correlation_sum: float = 0.0  # per caption of ≥ 2 words, the mean correlation of two words' maps, summed
    captions: int = 0  # captions of ≥ 2 words

    @property
    def hit_rate(self) -> float:
        return self.hits / self.words if self.words else 0.0

    @property
    def chance(self) -> float:
        return self.chance_sum / self.words if self.words else 0.0

    @property
    def correlation(self) -> float:
        """How alike the maps of two different words of one caption are (1: the same map for every word)."""
        return self.correlation_sum / self.captions if self.captions else 0.0

    @property
    def over_chance(self) -> float:
        return self.hit_rate / self.chance if self.chance else 0.0

    def add(
        self, maps: dict[str, np.ndarray], region_boxes: np.ndarray, targets: dict[str, list[Box]]
    ) -> None:
        """Score one caption: `maps` word → [R] map over `region_boxes` [R, ≥4]; words without a target or
        without a map are not counted."""
        pairs = mean_pair_correlation(np.stack(list(maps.values()))) if maps else None
        if pairs is not None:
            self.captions += 1
            self.correlation_sum += pairs
        for word, boxes in targets.items():
            if word not in maps:
                continue
            self.words += 1
            self.hits += int(any(inside(peak(maps[word], region_boxes), box) for box in boxes))
            self.chance_sum += min(1.0, sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes))

    def to_json(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer,
            "words": self.words,
            "hits": self.hits,
            "hit_rate": self.hit_rate,
            "chance": self.chance,
            "over_chance": self.over_chance,
            "word_map_correlation": self.correlation,
        }


def mean_pair_correlation(maps: np.ndarray) -> float | None:
    """The mean Pearson correlation, over the regions, of the maps of two different words ([W, R]); None for
    fewer than two words. A flat map (one value everywhere) correlates 0 with any other."""
    if len(maps) < 2:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num(np.corrcoef(maps))
    return float(corr[np.triu_indices(len(maps), 1)].mean())


def peak(similarity: np.ndarray, region_boxes: np.ndarray) -> tuple[float, float]:
    """The centre (x, y) of the best region of a [R] map (the first one on ties)."""
    if len(similarity) != len(region_boxes) or not len(similarity):
        raise AladinError(f"pointing: a map of {len(similarity)} values over {len(region_boxes)} regions")
    x0, y0, x1, y1 = region_boxes[int(np.argmax(similarity))][:4]
    return (float(x0) + float(x1)) / 2, (float(y0) + float(y1)) / 2


def inside(point: tuple[float, float], box: Box) -> bool:
    x, y = point
    return box[0] <= x < box[2] and box[1] <= y < box[3]


_PHRASE = re.compile(rf"\b({'|'.join(COLOURS)})\s+({'|'.join(SHAPES)})\b")


def object_words(caption: str, objects: Sequence[SceneObject], image_size: int) -> dict[str, list[Box]]:
    """The words of a synthetic caption that name a scene object, each with the boxes (0..1) of the objects
    it names there: both words of every "colour shape" phrase point at the one object of that colour and shape
    (unique in a scene). A phrase naming no object of the scene is a broken caption and is refused."""
    targets: dict[str, list[Box]] = {}
    for colour, shape in _PHRASE.findall(caption.lower()):
        found = [o for o in objects if (o.colour, o.shape) == (colour, shape)]
        if len(found) != 1:
            raise AladinError(
                f"pointing: {len(found)} objects are a {colour} {shape} in the scene of {caption!r}"
            )
        x0, y0, x1, y1 = (v / image_size for v in found[0].box)
        for word in (colour, shape):
            if (x0, y0, x1, y1) not in targets.setdefault(word, []):
                targets[word].append((x0, y0, x1, y1))
    return targets


def synthetic_targets(
    data_dir: str | Path, image_ids: Sequence[str], captions: Sequence[str]
) -> list[dict[str, list[Box]]]:
    """For each caption of a generated synthetic folder (with the id of its image), its object words' boxes."""
    scenes = {scene.image_id: scene for scene in read_scenes(data_dir)}
    marker = read_json(Path(data_dir) / MARKER_FILE)
    image_size = int(marker["config"]["image_size"])
    missing = [i for i in image_ids if i not in scenes]
    if missing:
        raise AladinError(
            f"{data_dir}: no scene for image {missing[0]!r} (not the folder these features came from?)"
        )
    return [object_words(c, scenes[i].objects, image_size) for i, c in zip(image_ids, captions, strict=True)]


def pointing_markdown(results: Iterable[PointingResult], title: str) -> str:
    """The game as a markdown table: hit rate, chance and their ratio per scorer."""
    lines = [
        f"**{title}**",
        "",
        "| explanation map | words | hits | hit rate | chance | × chance | two words' maps: correlation |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.scorer} | {r.words} | {r.hits} | {100 * r.hit_rate:.1f}% | {100 * r.chance:.1f}% "
            f"| {r.over_chance:.2f} | {r.correlation:.2f} |"
        )
    return "\n".join(lines) + "\n"
