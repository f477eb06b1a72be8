"""An indexed image's details, its thumbnail and its original file: only by id, never by path."""

import hashlib
import io
import mimetypes
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse

from aladin.service.routes.search import decode_image
from aladin.service.schemas import ItemOut, image_url, thumbnail_url
from aladin.service.state import ItemId, ServiceState

THUMBNAIL_SIZES = (64, 128, 256, 512)
THUMBNAIL_WAIT_S = 10.0
#: Browsers keep a copy but ask each time whether it is still current (an id can name another photo after a
#: rebuild): the ETag, made from the thumbnail's bytes, turns an unchanged one into a 304.
_REVALIDATE = {"Cache-Control": "no-cache"}
#: An original opened on its own runs nothing, whatever is inside it.
_INERT = {"Content-Security-Policy": "default-src 'none'; sandbox"}


@lru_cache(maxsize=512)
def _thumbnail(path: Path, stamp: tuple[int, int, int], size: int, max_pixels: int) -> tuple[bytes, str]:
    """A JPEG of the file and its ETag. Cached by the file's content stamp (inode, size, mtime), which the
    arguments include, so a changed or replaced file is rendered afresh whatever id it has now."""
    # a camera JPEG decodes at the smallest draft scale still covering the thumbnail (several times faster)
    img = decode_image(path.read_bytes(), max_pixels, f"the file {path.name}", min_size=(size, size))
    img.thumbnail((size, size))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    data = out.getvalue()
    return data, f'"{hashlib.sha256(data).hexdigest()[:32]}"'


def router(state: ServiceState) -> APIRouter:
    api = APIRouter(prefix="/api/items", tags=["items"])

    @api.get("/{item_id}")
    def item(item_id: ItemId) -> ItemOut:
        """An indexed image's details: its external id, file name and captions."""
        record = state.live_image(item_id).searcher.index.meta.images([item_id])[item_id]
        return ItemOut(
            id=item_id,
            external_id=record.external_id,
            name=Path(record.path).name,
            captions=list(record.captions),
            thumbnail=thumbnail_url(item_id),
            image=image_url(item_id),
        )

    @api.get("/{item_id}/thumbnail", response_class=Response)
    def thumbnail(
        request: Request, item_id: ItemId, size: Annotated[int, Query(ge=16, le=THUMBNAIL_SIZES[-1])] = 256
    ) -> Response:
        """A JPEG of an indexed image, at most `size` pixels a side (rounded up to one of a few sizes, so the
        cache stays bounded)."""
        path = state.image_file(item_id)
        size = next(allowed for allowed in THUMBNAIL_SIZES if allowed >= size)
        if not state.thumbnail_slots.acquire(timeout=THUMBNAIL_WAIT_S):
            raise HTTPException(503, "busy making thumbnails; try again", headers={"Retry-After": "1"})
        try:
            st = path.stat()
            data, etag = _thumbnail(
                path, (st.st_ino, st.st_size, st.st_mtime_ns), size, state.config.max_pixels
            )
        except HTTPException as exc:
            raise HTTPException(404, f"image {item_id}: {exc.detail}") from None
        finally:
            state.thumbnail_slots.release()
        headers = {**_REVALIDATE, "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    @api.get("/{item_id}/image", response_class=FileResponse)
    def image(item_id: ItemId) -> FileResponse:
        """The original file of an indexed image, full size (the same folder rule as thumbnails)."""
        path = state.image_file(item_id)
        media_type = mimetypes.guess_type(path.name)[0] or ""
        if not media_type.startswith("image/") or "svg" in media_type:  # nothing a browser would run
            media_type = "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers={**_REVALIDATE, **_INERT})

    return api
