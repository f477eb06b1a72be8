"""The persistent search index: FAISS over global vectors, a packed region/word store, SQLite metadata, and a
manifest that switches versions atomically.

Names are imported on first use, so that `aladin.index.config` (the CLI's defaults) loads without torch/FAISS.
"""

from __future__ import annotations

from aladin.lazy import lazy_exports

_WHERE = {
    "IndexBuilder": "builder",
    "build_index": "builder",
    "INDEX_FORMAT_VERSION": "config",
    "REGION_DTYPES": "config",
    "IndexConfig": "config",
    "DuplicateConfig": "config",
    "find_duplicates": "duplicates",
    "IndexUpdate": "update",
    "SearchIndex": "index",
    "SyncPlan": "sync",
    "SyncReport": "sync",
    "plan_sync": "sync",
    "sync_folder": "sync",
    "watch_folder": "sync",
    "IMAGES": "metadata",
    "TEXTS": "metadata",
    "ImageRecord": "metadata",
    "TextRecord": "metadata",
    "CachedSplitSource": "sources",
    "DatasetSource": "sources",
    "ImageFolderSource": "sources",
    "IndexSource": "sources",
    "find_images": "sources",
    "open_source": "sources",
    "EncodedChunk": "store",
    "PackedStore": "store",
}

__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
