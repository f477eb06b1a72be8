"""Text → images and image → images or captions."""

import json
from collections.abc import Sequence
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, HTTPException, Query, Response, UploadFile
from PIL import Image

from aladin.data.images import ImageTooLarge, decode_image_bytes
from aladin.errors import AladinError, DataError
from aladin.index.filters import Filter, filter_from_json
from aladin.index.metadata import IMAGES, TEXTS
from aladin.search.searcher import Hit, Searcher, keep_confident
from aladin.service.config import ServiceConfig
from aladin.service.guard import too_big
from aladin.service.schemas import SearchOut, search_out
from aladin.service.state import ServiceState


def decode_image(
    data: bytes, max_pixels: int, what: str = "the upload", min_size: tuple[int, int] | None = None
) -> Image.Image:
    """Upload bytes → the RGB image indexing would make of the same file (one decoder for both, at the encoder's
    `min_size`), as 4xx errors."""
    try:
        return decode_image_bytes(data, what, max_pixels, min_size)
    except ImageTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except DataError:
        raise HTTPException(
            400, f"{what} is not an image that can be decoded (PNG, JPEG, WebP, ...)"
        ) from None


def query_warning(searcher: Searcher, text: str) -> str | None:
    """Says so when `text` has more tokens than the text encoder reads (the rest would be cut silently),
    counted as `Searcher.truncation` counts them (`TextEncoder.untruncated_length`)."""
    encoder = searcher.text_encoder
    limit = encoder.config.max_length
    count = encoder.untruncated_length(text)
    if count <= limit:
        return None
    return f"the query is {count} tokens long, the text encoder reads only the first {limit}: the rest was ignored"


#: The `where` parameter of both searches.
WHERE = Annotated[
    str | None,
    Query(
        description="only photos matching a filter: its text form (taken>=2020-01-01 and camera~Pixel) or its "
        'JSON form ({"taken": {">=": "2020-01-01"}, "camera": {"~": "Pixel"}}); see the README'
    ),
]
COLLAPSE = Annotated[
    bool, Query(description="one hit per group of near-duplicate images, its `similar` counting the others")
]


def parse_where(where: str | None, limit: int) -> Filter | None:
    """The `where` parameter as a filter (`aladin.index.filters`): its JSON form when it starts with { or [, else
    its text form; a bad one is a 400 naming the column or JSON path."""
    if where is None or not where.strip():
        return None
    if len(where) > limit:
        raise HTTPException(400, f"where: {len(where)} characters; the limit is {limit}")
    try:
        return filter_from_json(json.loads(where) if where.lstrip()[0] in "{[" else where)
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f"where: not valid JSON ({exc})") from None
    except AladinError as exc:
        raise HTTPException(400, str(exc)) from None


def text_searches(
    k: int,
    rerank: int | None,
    searcher: Searcher,
    texts: Sequence[str],
    where: Filter | None = None,
    collapse: bool = False,
) -> list[tuple[int, list[Hit], str | None]]:
    """Text searches sharing k, re-rank setting, filter and collapse setting, as one batch: what each would get
    alone, with its warning."""
    depth = searcher.rerank_depth(rerank)
    found = searcher.search_encoded(IMAGES, searcher.encode_texts(texts), k, depth, where, collapse=collapse)
    return [(depth, hits, query_warning(searcher, text)) for text, hits in zip(texts, found, strict=True)]


def image_searches(
    target: str,
    k: int,
    rerank: int | None,
    max_pixels: int,
    searcher: Searcher,
    uploads: Sequence[bytes],
    where: Filter | None = None,
    collapse: bool = False,
) -> list[tuple[int, list[Hit]] | HTTPException]:
    """Image uploads sharing target, k, re-rank and collapse settings, as one batch (`Searcher.search_image` for many): an
    upload that cannot be decoded gets its own 4xx, the others their hits."""
    depth = searcher.rerank_depth(rerank) if target == TEXTS else 0
    decoded: list[Image.Image | HTTPException] = []
    for data in uploads:
        try:
            decoded.append(decode_image(data, max_pixels, min_size=searcher.image_encoder.decode_size))
        except HTTPException as exc:
            decoded.append(exc)
    images = [image for image in decoded if isinstance(image, Image.Image)]
    found = iter(
        searcher.search_encoded(target, searcher.encode_images(images), k, depth, where, collapse=collapse)
        if images
        else []
    )
    return [image if isinstance(image, HTTPException) else (depth, next(found)) for image in decoded]


async def read_upload(file: UploadFile, limit: int) -> bytes:
    """The uploaded bytes, refused with a 413 past `limit` (reading at most one byte more) or a 400 when empty."""
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, too_big(len(data), limit))
    if not data:
        raise HTTPException(400, "the upload is empty")
    return data


MinScore = Annotated[
    float | None,
    Query(
        ge=0,
        le=1,
        description="only hits whose confidence (calibrated P(true match)) is at least this; refused when the "
        "model has no calibration",
    ),
]


def confident(state: ServiceState, hits: list[Hit], min_score: float | None) -> list[Hit]:
    """`keep_confident` with the serving model (a cut it cannot make is a 400, as every AladinError); without a
    cut, the served version (its files checked) is not looked up again."""
    if min_score is None:
        return hits
    return keep_confident(hits, min_score, state.live.current().searcher.model)


def bounded_parameters(config: ServiceConfig) -> tuple[Any, Any]:
    """The `k` and `rerank` parameters, bounded by the service config."""
    k = Annotated[int, Query(ge=1, le=config.max_k, description="results to return")]
    rerank = Annotated[
        int | None,
        Query(
            ge=0,
            le=config.max_rerank,
            description="kNN candidates re-ranked by the alignment head (0: none; absent: the model's "
            "setting chosen on validation)",
        ),
    ]
    return k, rerank


def router(state: ServiceState) -> APIRouter:
    config = state.config
    api = APIRouter(prefix="/api", tags=["search"])
    K, Rerank = bounded_parameters(config)

    @api.get("/search", response_model=SearchOut)
    async def search_text(
        q: Annotated[str, Query(description="the text to find images for")],
        k: K = 10,
        rerank: Rerank = None,
        where: WHERE = None,
        collapse: COLLAPSE = False,
        min_score: MinScore = None,
    ) -> Response:
        """Text → images; `warning` says when the query was longer than the text encoder reads."""
        text = state.query(q)
        chosen = parse_where(where, config.max_query_chars)
        depth, hits, warning = await state.on_model_batched(
            ("text", k, rerank, str(chosen), collapse),
            partial(text_searches, k, rerank, where=chosen, collapse=collapse),
            text,
        )
        return search_out(q, "images", depth, confident(state, hits, min_score), warning)

    @api.post("/search/image", response_model=SearchOut)
    async def search_image(
        file: Annotated[UploadFile, File(description="the query image")],
        target: Literal["images", "texts"] = "images",
        k: K = 10,
        rerank: Rerank = None,
        where: WHERE = None,
        collapse: COLLAPSE = False,
        min_score: MinScore = None,
    ) -> Response:
        """Image → similar images, or image → captions (target=texts, re-ranked like text search); `collapse`
        applies to image hits."""
        chosen = parse_where(where, config.max_query_chars)
        if target == TEXTS and not state.live.current().searcher.index.has_texts:
            raise HTTPException(400, "this index holds no captions (build it with --with-texts)")
        data = await read_upload(file, config.max_upload_bytes)
        depth, hits = await state.on_model_batched(
            ("image", target, k, rerank, str(chosen), collapse),
            partial(image_searches, target, k, rerank, config.max_pixels, where=chosen, collapse=collapse),
            data,
        )
        return search_out(file.filename or "upload", target, depth, confident(state, hits, min_score))

    return api
