"""An index written by the release before issue #23 (tests/fixtures/legacy/index, see make_fixture.py there)
still loads and answers the same searches with the same ids and scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from index_fixtures import ToyTextEncoder

from aladin.model.aladin import AladinModel
from aladin.search.searcher import Searcher

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "index"


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    """A copy, so nothing the test does can change the fixture."""
    shutil.copytree(LEGACY, tmp_path / "legacy")
    return tmp_path / "legacy"


def test_legacy_index_searches_as_recorded(legacy: Path) -> None:
    expected = json.loads((legacy / "expected.json").read_text())
    model = AladinModel.from_pretrained(legacy / "model", "cpu")
    searcher = Searcher.open(legacy / "index", model, text_encoder=ToyTextEncoder())
    for query, hits in expected.items():
        got = searcher.search_text(query, k=4, rerank=4)
        assert [h.id for h in got] == [h["id"] for h in hits], query
        assert [h.score for h in got] == pytest.approx([h["score"] for h in hits], abs=1e-6)
        assert [h.first_stage_score for h in got] == pytest.approx(
            [h["first_stage_score"] for h in hits], abs=1e-6
        )
