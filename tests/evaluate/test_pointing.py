"""The pointing game on hand-built maps, boxes and scenes: exact hits, chance and the words that count."""

from __future__ import annotations

import numpy as np
import pytest

from aladin.data.synthetic import SceneObject
from aladin.errors import AladinError
from aladin.evaluate.pointing import PointingResult, object_words, peak, pointing_markdown

#: A 2×2 grid of regions: top-left, top-right, bottom-left, bottom-right (x1, y1, x2, y2, area).
GRID = np.array(
    [[0, 0, 0.5, 0.5, 0.25], [0.5, 0, 1, 0.5, 0.25], [0, 0.5, 0.5, 1, 0.25], [0.5, 0.5, 1, 1, 0.25]]
)


def test_hits_misses_and_chance_are_counted_exactly() -> None:
    result = PointingResult("toy")
    maps = {
        "red": np.array([0.9, 0.1, 0.2, 0.3]),  # peaks top-left: inside its target
        "circle": np.array([0.1, 0.8, 0.2, 0.3]),  # peaks top-right: its target is bottom-right
        "blue": np.array([0.0, 0.0, 0.0, 1.0]),  # names no object here: not counted
    }
    targets = {
        "red": [(0.1, 0.1, 0.4, 0.4)],  # area 0.09
        "circle": [(0.6, 0.6, 0.9, 0.9)],  # area 0.09
        "star": [(0.0, 0.0, 1.0, 1.0)],  # no map for it: not counted
    }
    result.add(maps, GRID, targets)
    assert (result.words, result.hits) == (2, 1)
    assert result.chance == pytest.approx(0.09) and result.over_chance == pytest.approx(0.5 / 0.09)
    # a word naming two objects in one caption hits either; its chance is both boxes' share
    result.add(
        {"red": np.array([0.0, 0.0, 1.0, 0.0])}, GRID, {"red": [(0.6, 0.0, 0.9, 0.3), (0.0, 0.6, 0.4, 1.0)]}
    )
    assert (result.words, result.hits) == (3, 2)
    assert result.chance == pytest.approx((0.09 + 0.09 + 0.09 + 0.16) / 3)
    assert "| toy | 3 | 2 | 66.7% |" in pointing_markdown([result], "game")


def test_the_peak_is_the_best_regions_centre_first_on_ties() -> None:
    assert peak(np.array([0.2, 0.5, 0.5, 0.1]), GRID) == (0.75, 0.25)
    with pytest.raises(AladinError, match="a map of 3 values over 4 regions"):
        peak(np.zeros(3), GRID)


def test_object_words_point_at_the_named_objects_boxes() -> None:
    objects = [
        SceneObject("circle", "red", "small", "plain", (0, 0, 40, 40)),
        SceneObject("square", "blue", "large", "striped", (100, 100, 180, 180)),
        SceneObject("square", "red", "small", "plain", (100, 0, 140, 40)),  # red, but not named
    ]
    targets = object_words("A small red circle to the left of a striped blue square.", objects, 200)
    assert targets == {
        "red": [(0.0, 0.0, 0.2, 0.2)],
        "circle": [(0.0, 0.0, 0.2, 0.2)],
        "blue": [(0.5, 0.5, 0.9, 0.9)],
        "square": [(0.5, 0.5, 0.9, 0.9)],
    }
    assert object_words("Red square and red circle; the circle is left of the square", objects, 200)[
        "red"
    ] == [
        (0.5, 0.0, 0.7, 0.2),
        (0.0, 0.0, 0.2, 0.2),
    ]
    with pytest.raises(AladinError, match="0 objects are a green star"):
        object_words("a green star", objects, 200)


def test_how_alike_two_words_maps_are_is_averaged_over_captions() -> None:
    result = PointingResult("toy")
    result.add({"a": np.array([0.0, 1, 0, 1]), "b": np.array([0.0, 2, 0, 2])}, GRID, {})  # the same map: 1
    result.add({"a": np.array([1.0, 0, 0, 0]), "b": np.array([0.0, 1, 0, 0])}, GRID, {})  # two spots: -1/3
    result.add({"a": np.array([1.0, 0, 0, 0])}, GRID, {})  # one word: nothing to compare
    assert result.captions == 2 and result.correlation == pytest.approx((1 - 1 / 3) / 2)
    assert result.words == 0 and result.to_json()["word_map_correlation"] == pytest.approx(1 / 3)
