"""The JSON shapes of the API's answers."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response
from pydantic import BaseModel

from aladin.search.searcher import Hit


class HitOut(BaseModel):
    id: int
    score: float
    first_stage_score: float | None
    external_id: str
    image_id: int
    caption: str | None
    thumbnail: str
    image: str  # the full-size original
    similar: int = 0  # collapsed search: near-duplicates of this image left out of the list
    confidence: float | None = None  # P(true match), calibrated; null when the model has no calibration


class SearchOut(BaseModel):
    query: str
    target: str
    rerank: int
    hits: list[HitOut]
    warning: str | None = None  # e.g. the query was longer than the text encoder reads


class ItemOut(BaseModel):
    id: int
    external_id: str
    name: str
    captions: list[str]
    thumbnail: str
    image: str


class ExplainOut(BaseModel):
    item_id: int
    text: str
    words: list[str]  # the text's content words (stop words folded out, word pieces into whole words)
    similarity: list[list[float]]  # [words, regions]: each word alone against each region
    query_similarity: list[float]  # [regions]: the whole text as the alignment head reads it
    boxes: list[list[float]] | None  # [regions, 4]: x1, y1, x2, y2 in 0..1
    score: float
    thumbnail: str
    #: [regions] the object tag of each tag region ("" for a picture region); empty when the image has none
    region_tags: list[str] = []
    #: [words] the tag each word matched best when a tag region beat every picture region, else ""
    word_tags: list[str] = []


def thumbnail_url(image_id: int) -> str:
    return f"/api/items/{image_id}/thumbnail"


def image_url(image_id: int) -> str:
    return f"/api/items/{image_id}/image"


def hit_out(hit: Hit) -> dict[str, Any]:
    """A hit as `HitOut`, without the server's file path (the client gets the image through its URLs)."""
    return {
        "id": hit.id,
        "score": hit.score,
        "first_stage_score": hit.first_stage_score,
        "external_id": hit.external_id,
        "image_id": hit.image_id,
        "caption": hit.caption,
        "thumbnail": thumbnail_url(hit.image_id),
        "image": image_url(hit.image_id),
        "similar": hit.similar,
        "confidence": hit.confidence,
    }


def search_out(query: str, target: str, rerank: int, hits: list[Hit], warning: str | None = None) -> Response:
    """A `SearchOut` answer, serialised straight from the hits: building and validating the pydantic models
    (and `dataclasses.asdict` on every hit) cost the event loop more than the rest of the route, and the
    fields are ours, already of their types."""
    body = {
        "query": query,
        "target": target,
        "rerank": rerank,
        "hits": [hit_out(hit) for hit in hits],
        "warning": warning,
    }
    return Response(orjson.dumps(body), media_type="application/json")
