"""The persistent search index: FAISS over global vectors, a packed region/word store, SQLite metadata, and a
manifest that switches versions atomically."""

from aladin.index.builder import IndexBuilder, build_index
from aladin.index.config import INDEX_FORMAT_VERSION, REGION_DTYPES, IndexConfig
from aladin.index.index import IndexUpdate, SearchIndex
from aladin.index.metadata import IMAGES, TEXTS, ImageRecord, TextRecord
from aladin.index.sources import (
    CachedSplitSource,
    DatasetSource,
    ImageFolderSource,
    IndexSource,
    find_images,
    open_source,
)
from aladin.index.store import EncodedChunk, PackedStore

__all__ = [
    "IMAGES",
    "INDEX_FORMAT_VERSION",
    "REGION_DTYPES",
    "TEXTS",
    "CachedSplitSource",
    "DatasetSource",
    "EncodedChunk",
    "ImageFolderSource",
    "ImageRecord",
    "IndexBuilder",
    "IndexConfig",
    "IndexSource",
    "IndexUpdate",
    "PackedStore",
    "SearchIndex",
    "TextRecord",
    "build_index",
    "find_images",
    "open_source",
]
