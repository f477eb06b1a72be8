"""The service tests run the app over the index tests' toy models, encoders and datasets."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "index"))

from fastapi.testclient import TestClient  # noqa: E402
from index_fixtures import ToyImageEncoder, ToyTextEncoder, built, dataset, model, text_encoder  # noqa: E402, F401
from service_limits import LIMITS, LOCAL  # noqa: E402

from aladin.index import SearchIndex  # noqa: E402
from aladin.index.config import DuplicateConfig  # noqa: E402
from aladin.model.aladin import AladinModel  # noqa: E402
from aladin.search import Searcher  # noqa: E402
from aladin.service.app import create_app  # noqa: E402


@pytest.fixture
def searcher(built: SearchIndex, model: AladinModel, text_encoder: ToyTextEncoder) -> Searcher:  # noqa: F811
    # The toy model's vectors are nearly parallel (distinct pictures reach cosine 0.997): only identical pictures
    # are near-duplicates, so that a collapsed search (the page's) keeps the distinct ones apart.
    duplicates = DuplicateConfig(threshold=0.9999)
    return Searcher(
        built, model, text_encoder, ToyImageEncoder(model.config.image_encoder), duplicates=duplicates
    )


@pytest.fixture
def client(searcher: Searcher) -> Iterator[TestClient]:
    with TestClient(create_app(searcher, LIMITS), base_url=LOCAL) as client:
        yield client
