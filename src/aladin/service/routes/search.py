"""Text → images and image → images or captions."""

from typing import Annotated, Literal

from fastapi import APIRouter, File, HTTPException, Query, UploadFile
from PIL import Image

from aladin.data.images import ImageTooLarge, decode_image_bytes
from aladin.errors import DataError
from aladin.index.metadata import TEXTS
from aladin.search.searcher import Hit, Searcher
from aladin.service.guard import too_big
from aladin.service.schemas import SearchOut, hit_out
from aladin.service.state import ServiceState


def decode_image(data: bytes, max_pixels: int, what: str = "the upload") -> Image.Image:
    """Upload bytes → the RGB image indexing would make of the same file (one decoder for both), as 4xx errors."""
    try:
        return decode_image_bytes(data, what, max_pixels)
    except ImageTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except DataError:
        raise HTTPException(
            400, f"{what} is not an image that can be decoded (PNG, JPEG, WebP, ...)"
        ) from None


def query_warning(searcher: Searcher, text: str) -> str | None:
    """Says so when `text` has more tokens than the text encoder reads (the rest would be cut silently).
    Counts with the encoder's tokenizer when it has one, else with its own (already truncated) lengths."""
    encoder = searcher.text_encoder
    limit = encoder.config.max_length
    tokenizer = getattr(encoder, "tokenizer", None)
    if tokenizer is not None:
        count = len(tokenizer(text, truncation=False, verbose=False)["input_ids"])
    else:
        count = encoder.lengths([text])[0]
    if count <= limit:
        return None
    return f"the query is {count} tokens long, the text encoder reads only the first {limit}: the rest was ignored"


def router(state: ServiceState) -> APIRouter:
    config = state.config
    api = APIRouter(prefix="/api", tags=["search"])
    K = Annotated[int, Query(ge=1, le=config.max_k, description="results to return")]
    Rerank = Annotated[
        int | None,
        Query(
            ge=0,
            le=config.max_rerank,
            description="kNN candidates re-ranked by the alignment head (0: none; absent: the model's "
            "setting chosen on validation)",
        ),
    ]

    @api.get("/search")
    async def search_text(
        q: Annotated[str, Query(description="the text to find images for")], k: K = 10, rerank: Rerank = None
    ) -> SearchOut:
        """Text → images; `warning` says when the query was longer than the text encoder reads."""
        text = state.query(q)

        def run(searcher: Searcher) -> tuple[int, list[Hit], str | None]:
            depth = searcher.rerank_depth(rerank)
            return depth, searcher.search_text(text, k, depth), query_warning(searcher, text)

        depth, hits, warning = await state.on_model(run)
        return SearchOut(
            query=q, target="images", rerank=depth, hits=[hit_out(h) for h in hits], warning=warning
        )

    @api.post("/search/image")
    async def search_image(
        file: Annotated[UploadFile, File(description="the query image")],
        target: Literal["images", "texts"] = "images",
        k: K = 10,
        rerank: Rerank = None,
    ) -> SearchOut:
        """Image → similar images, or image → captions (target=texts, re-ranked like text search)."""
        if target == TEXTS and not state.live.current().searcher.index.has_texts:
            raise HTTPException(400, "this index holds no captions (build it with --with-texts)")
        data = await file.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise HTTPException(413, too_big(len(data), config.max_upload_bytes))
        if not data:
            raise HTTPException(400, "the upload is empty")

        def run(searcher: Searcher) -> tuple[int, list[Hit]]:
            depth = searcher.rerank_depth(rerank) if target == TEXTS else 0
            image = decode_image(data, config.max_pixels)
            return depth, searcher.search_image(image, k, depth, target=target)

        depth, hits = await state.on_model(run)
        name = file.filename or "upload"
        return SearchOut(query=name, target=target, rerank=depth, hits=[hit_out(h) for h in hits])

    return api
