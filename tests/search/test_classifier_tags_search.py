"""The user's own photos with classifier tags end to end: index build, search, serve and explain with a small
model whose image side reads the bundled CNN's grid plus its tags (issue #28)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from index_fixtures import indexed_workspace
from PIL import Image

from aladin.cli.main import main
from aladin.config import AladinConfig, ImageEncoderConfig, ModelConfig, TextEncoderConfig
from aladin.data.images import load_image
from aladin.model.aladin import AladinModel
from aladin.search import Searcher
from aladin.service.app import create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from service_limits import LIMITS, LOCAL  # noqa: E402

TAGGED = ImageEncoderConfig(multiscale=False, classifier_tags=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("tags")
    torch.manual_seed(0)
    config = AladinConfig(
        image_encoder=TAGGED,
        text_encoder=TextEncoderConfig(),
        model=ModelConfig(
            image_feature_dim=1280 + 384,
            text_feature_dim=384,
            embed_dim=16,
            global_dim=16,
            ff_dim=32,
            num_heads=2,
        ),
    )
    return indexed_workspace(root, AladinModel(config).eval())


def test_an_index_of_tagged_photos_searches_by_text_and_by_image(
    workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    argv = ["search", "a red circle", "--index", str(workspace["index"]), "--k", "3", "--json"]
    assert main(argv) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 3
    argv = [
        "search",
        "--image",
        str(workspace["image"]),
        "--index",
        str(workspace["index"]),
        "--k",
        "2",
        "--json",
    ]
    assert main(argv) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert Path(hits[0]["path"]).name == workspace["image"].name  # an indexed photo finds itself first


def test_explaining_a_tagged_photo_names_its_tag_regions(workspace: dict[str, Path], tmp_path: Path) -> None:
    model = AladinModel.from_pretrained(workspace["model"])
    searcher = Searcher.open(workspace["index"], model)
    item = next(
        i for i, rec in searcher.index.meta.images(list(range(6))).items() if rec.path.endswith("img002.png")
    )
    labels = searcher.image_encoder.tag_labels([load_image(workspace["image"])])[0]
    assert labels  # the classifier named something in the drawing
    explanation = searcher.explain("a red circle", item)
    assert explanation.region_tags == [""] * 49 + labels  # the grid cells, then the tags' word pieces
    assert len(explanation.word_tags) == len(explanation.words) == 2
    assert set(explanation.word_tags) <= {"", *labels}
    np.testing.assert_array_equal(explanation.picture_regions(), np.arange(49))

    with TestClient(create_app(searcher, LIMITS), base_url=LOCAL) as client:
        found = client.get("/api/search", params={"q": "a red circle", "k": 3}).json()
        assert len(found["hits"]) == 3
        body = client.get("/api/explain", params={"q": "a red circle", "id": item}).json()
    assert body["region_tags"] == explanation.region_tags and body["word_tags"] == explanation.word_tags

    out = tmp_path / "heat.png"
    argv = ["explain", "a red circle", str(workspace["image"]), "--index", str(workspace["index"])]
    assert main([*argv, "--out", str(out)]) == 0
    assert Image.open(out).format == "PNG"
