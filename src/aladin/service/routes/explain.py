"""Why an image matches a text: each content word's and the whole text's cosine with each region (heatmaps)."""

from typing import Annotated

from fastapi import APIRouter, Query

from aladin.search.searcher import Explanation, Searcher
from aladin.service.schemas import ExplainOut, thumbnail_url
from aladin.service.state import MAX_ID, ServiceState


def router(state: ServiceState) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["explain"])

    @api.get("/explain")
    async def explain(
        q: Annotated[str, Query(description="the text to explain")],
        item_id: Annotated[int, Query(alias="id", ge=0, le=MAX_ID, description="the image id")],
    ) -> ExplainOut:
        """Why image `id` matches text `q`: each content word's and the whole text's cosine with each region."""
        text = state.query(q)
        state.live_image(item_id)

        def run(searcher: Searcher) -> Explanation:
            return searcher.explain(text, item_id)

        found = await state.on_model(run)
        return ExplainOut(
            item_id=item_id,
            text=text,
            words=found.words,
            similarity=found.similarity.round(4).tolist(),
            query_similarity=found.query_similarity.round(4).tolist(),
            boxes=None if found.boxes is None else found.boxes[:, :4].round(4).tolist(),
            score=found.score,
            thumbnail=thumbnail_url(item_id),
            region_tags=found.region_tags,
            word_tags=found.word_tags,
        )

    return api
