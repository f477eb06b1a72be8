"""The search answer is serialised by hand (orjson) for speed: it must stay exactly what the documented schema says."""

from __future__ import annotations

import dataclasses
import json

from aladin.search.searcher import Hit
from aladin.service.schemas import HitOut, SearchOut, search_out


def test_search_answer_has_every_schema_field_and_validates_against_it():
    hits = [
        Hit(id=3, score=0.5, first_stage_score=0.25, path="/photos/a.jpg", external_id="a.jpg", image_id=3),
        Hit(3, 0.1, None, "/photos/a.jpg", "a.jpg", 3, caption="a dog", similar=2, confidence=0.7),
    ]
    body = json.loads(search_out("a dog", "images", 100, hits, "too long").body)
    assert set(body) == set(SearchOut.model_fields)
    assert all(set(hit) == set(HitOut.model_fields) for hit in body["hits"])
    parsed = SearchOut.model_validate(body)  # the documented types, not just the names
    assert [h.id for h in parsed.hits] == [3, 3]
    assert parsed.hits[1].similar == 2 and parsed.hits[1].confidence == 0.7
    # every Hit field but the server's file path reaches the client
    assert {f.name for f in dataclasses.fields(Hit)} - set(HitOut.model_fields) == {"path"}
    assert "/photos" not in json.dumps(body)
