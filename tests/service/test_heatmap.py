"""Explaining any image with the model's own encoders, and drawing explanations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from index_fixtures import ToyImageEncoder, ToyTextEncoder, picture
from PIL import Image

from aladin.errors import AladinError
from aladin.model.aladin import AladinModel
from aladin.search import Searcher
from aladin.service.heatmap import explain_image, region_heat, render_heatmap


def test_explaining_an_indexed_picture_agrees_with_the_searcher(
    searcher: Searcher, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    image_encoder = ToyImageEncoder(model.config.image_encoder)
    fresh = explain_image(model, text_encoder, image_encoder, "small red circle", picture(5))
    stored = searcher.explain("small red circle", 5)  # regions read back from the (default, int8) store
    assert fresh.words == stored.words == ["small", "red", "circle"]
    np.testing.assert_allclose(fresh.similarity, stored.similarity, atol=5e-3)
    np.testing.assert_allclose(fresh.query_similarity, stored.query_similarity, atol=5e-3)
    np.testing.assert_allclose(fresh.boxes, stored.boxes, atol=1e-6)
    assert fresh.score == pytest.approx(stored.score, abs=5e-3)
    with pytest.raises(AladinError, match="empty text"):
        explain_image(model, text_encoder, image_encoder, "  ", picture(5))


def test_region_heat_averages_overlapping_regions() -> None:
    boxes = np.array([[0, 0, 1, 1, 1], [0, 0, 0.5, 1, 0.5], [0, 0, 0.25, 0.25, 0.0625]], dtype=np.float32)
    heat = region_heat(np.array([1.0, 0.0]), boxes[:2], cells=4)
    np.testing.assert_allclose(heat, [[0.5, 0.5, 1, 1]] * 4)
    corner = region_heat(np.array([4.0]), boxes[2:], cells=4)
    assert corner[0, 0] == 4 and np.isnan(corner[1:, :]).all() and np.isnan(corner[0, 1:]).all()


def test_render_heatmap_draws_chosen_words(
    tmp_path: Path, searcher: Searcher, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    explanation = searcher.explain("red circle on the left", 1)
    everything = render_heatmap(picture(1), explanation, tmp_path / "all.png")
    one = render_heatmap(picture(1), explanation, tmp_path / "one.png", ["circle"])
    wide, single = Image.open(everything), Image.open(one)
    # the whole text and three words against the whole text and one
    assert wide.format == single.format == "PNG" and wide.width > single.width
    with pytest.raises(AladinError, match="'dog' is not among the text's words: red circle left"):
        render_heatmap(picture(1), explanation, tmp_path / "bad.png", ["dog"])
    assert not (tmp_path / "bad.png").exists()
