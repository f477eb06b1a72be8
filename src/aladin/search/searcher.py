"""Two-stage search: kNN over the matching head's global vectors finds a short list fast, then the alignment head
(every query word against every region) re-ranks that list with the finer score it was distilled from."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from aladin.data.images import load_image
from aladin.encoders.image import ImageEncoder, build_image_encoder
from aladin.encoders.text import TextEncoder, build_text_encoder
from aladin.errors import AladinError, DataError
from aladin.index.config import DuplicateConfig
from aladin.index.duplicates import GroupIndex, duplicate_groups
from aladin.index.encoding import model_device
from aladin.index.filters import Filter, as_filter
from aladin.index.index import SearchIndex, check_model, model_for_index
from aladin.index.metadata import IMAGES, TEXTS, id_array
from aladin.model.aladin import AladinModel
from aladin.model.alignment import paired_region_word_scores, region_word_scores
from aladin.model.calibration import IMAGE_TO_TEXT, TEXT_TO_IMAGE
from aladin.search.explain import Explanation, explain_pair

#: A search filter as callers give it: parsed, its text form, or its JSON form (`aladin.index.filters`).
Where = Filter | str | dict[str, Any] | list[Any] | None
#: The searches a calibration covers, by (query modality, kind searched): the curve's direction.
CALIBRATED_SEARCHES = {("text", IMAGES): TEXT_TO_IMAGE, ("image", TEXTS): IMAGE_TO_TEXT}
#: Re-ranking scores every query of a chunk against every candidate of it when that is at most this many times
#: the (query, candidate) pairs asked for (`Searcher._align`).
DENSE_PAIRS = 2


class QueryTruncatedWarning(UserWarning):
    """A text query longer than the text encoder reads: only its start is searched for."""


@dataclass(frozen=True)
class Hit:
    """One result. `score` ranks the results: the alignment score when re-ranked, else the kNN score."""

    id: int  # the image id, or the caption id for image→text hits
    score: float
    first_stage_score: float | None  # the kNN (global vector) score; None when no kNN stage ran
    path: str  # the image file (for a caption hit: the image it describes)
    external_id: str
    image_id: int
    caption: str | None = None  # set for caption hits
    similar: int = 0  # collapsed search: how many near-duplicates of this image its hit stands for
    #: P(a true match) from the model's calibration; None when the model has none or the search is not one it
    #: was fitted for (image → image).
    confidence: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EncodedQueries:
    """Queries through the model: global vectors for kNN, plus the padded words or regions for re-ranking."""

    global_vectors: torch.Tensor  # [nq, G]
    rows: torch.Tensor  # [nq, L, E]
    mask: torch.Tensor  # [nq, L]
    #: "text" or "image": which calibration curve a search with these queries uses.
    modality: str = ""

    def __len__(self) -> int:
        return len(self.global_vectors)

    def subset(self, rows: Sequence[int]) -> EncodedQueries:
        """Only these queries (to search again those that need more candidates)."""
        pick = torch.as_tensor(list(rows), dtype=torch.long, device=self.global_vectors.device)
        return EncodedQueries(self.global_vectors[pick], self.rows[pick], self.mask[pick], self.modality)


class Searcher:
    """Searches `index` with the model that built it (checked); encoders default to those the model names."""

    def __init__(
        self,
        index: SearchIndex,
        model: AladinModel,
        text_encoder: TextEncoder | None = None,
        image_encoder: ImageEncoder | None = None,
        pair_batch: int = 2048,
        duplicates: DuplicateConfig | None = None,
    ):
        check_model(index.manifest, model, index.directory)
        self.index = index
        self.model = model.eval()
        #: Used when a search names no re-rank depth, and for the weight of the kNN score fused into the
        #: re-rank score.
        self.rerank = model.rerank
        self.pair_batch = pair_batch
        #: What counts as a near-duplicate when a search collapses them: given, else the threshold the checkpoint
        #: records as measured for its vectors (the bundled model's), else unknown (collapsing is refused).
        self.duplicates = duplicates or model_duplicates(model)
        self._text_encoder = text_encoder
        self._image_encoder = image_encoder

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        model: AladinModel | None = None,
        device: str | torch.device = "cpu",
        verify_checksums: bool = True,
        **kwargs: Any,
    ) -> Searcher:
        """A searcher over the index in `index_dir` with `model`, or else the model its manifest names (its
        recorded checkpoint, or the bundled default model); `kwargs` go to `Searcher`."""
        model = model if model is not None else model_for_index(index_dir, device)
        return cls(SearchIndex.load(index_dir, model, verify_checksums=verify_checksums), model, **kwargs)

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            self._text_encoder = build_text_encoder(self.model.config.text_encoder, model_device(self.model))
        return self._text_encoder

    @property
    def image_encoder(self) -> ImageEncoder:
        if self._image_encoder is None:
            cfg = self.model.config.image_encoder
            self._image_encoder = build_image_encoder(cfg, model_device(self.model))
        return self._image_encoder

    # ---- encoding queries -----------------------------------------------------------------------
    def truncation(self, query: str) -> int | None:
        """How many tokens at the end of `query` the text encoder cannot read (None when it reads it all)."""
        length = self.text_encoder.untruncated_length(query)
        limit = self.text_encoder.config.max_length
        return length - limit if length > limit else None

    @torch.inference_mode()
    def encode_texts(self, queries: Sequence[str]) -> EncodedQueries:
        """Text queries → global vectors and words; an empty or blank query is refused, a query longer than the
        text encoder reads warns (`QueryTruncatedWarning`)."""
        for query in queries:
            if not isinstance(query, str) or not query.strip():
                raise AladinError(f"empty query {query!r}: give some words to search for")
            dropped = self.truncation(query)
            if dropped:
                limit = self.text_encoder.config.max_length
                warnings.warn(
                    f"query too long: the text encoder reads {limit} tokens, the last {dropped} are ignored",
                    QueryTruncatedWarning,
                    stacklevel=3,
                )
        batch = self.text_encoder.encode(list(queries)).to(model_device(self.model))
        emb = self.model.encode_text(batch.tokens, batch.attention_mask, batch.token_mask)
        wordless = [q for q, n in zip(queries, emb.word_mask.sum(dim=1).tolist(), strict=True) if n == 0]
        if wordless:
            raise AladinError(f"query {wordless[0]!r} has no words the model can score")
        return EncodedQueries(emb.global_vector, emb.words, emb.word_mask, "text")

    @torch.inference_mode()
    def encode_images(self, images: Sequence[str | Path | Image.Image]) -> EncodedQueries:
        """Image queries (files or PIL images) → global vectors and regions; an unreadable file is named. A file is
        decoded as an index build decodes it (a JPEG at the encoder's draft size), so an indexed photo finds itself
        with the vector it was indexed with."""
        size = self.image_encoder.decode_size
        pictures = [img if isinstance(img, Image.Image) else load_image(img, size) for img in images]
        batch = self.image_encoder.encode(pictures).to(model_device(self.model))
        emb = self.model.encode_image(batch.regions, batch.boxes, batch.region_mask)
        return EncodedQueries(emb.global_vector, emb.regions, emb.region_mask, "image")

    # ---- searching ------------------------------------------------------------------------------
    def search_text(
        self,
        query: str,
        k: int = 10,
        rerank: int | None = None,
        where: Where = None,
        milvus_filter: str | None = None,
        collapse: bool = False,
    ) -> list[Hit]:
        """Text → images: kNN for the top `rerank` (at least k), re-ranked by the alignment head; rerank=0: kNN only,
        None: the model's validated setting (`Searcher.rerank`).
        `where` keeps only images that match a filter (`aladin.index.filters`: its text form, e.g.
        "taken>=2020-01-01 and camera~Pixel", its JSON form, or a parsed `Filter`), on any backend;
        `milvus_filter` only those whose Milvus fields match an expression (e.g. 'folder == "beach"').
        `collapse`: one hit per group of near-duplicates (see `search_encoded`)."""
        return self.search_texts([query], k, rerank, where, milvus_filter, collapse)[0]

    def search_texts(
        self,
        queries: Sequence[str],
        k: int = 10,
        rerank: int | None = None,
        where: Where = None,
        milvus_filter: str | None = None,
        collapse: bool = False,
    ) -> list[list[Hit]]:
        """`search_text` for many queries, encoded, searched and re-ranked in batches."""
        return self.search_encoded(
            IMAGES, self.encode_texts(queries), k, rerank, where, milvus_filter, collapse
        )

    def search_image(
        self,
        image: str | Path | Image.Image,
        k: int = 10,
        rerank: int | None = None,
        target: str = IMAGES,
        where: Where = None,
        milvus_filter: str | None = None,
        collapse: bool = False,
    ) -> list[Hit]:
        """Image → similar images (kNN over global vectors: the alignment head scores regions against words, so
        there is nothing to re-rank with and `rerank` is not used), or image → captions (target="texts"),
        re-ranked like text search. `where` and `milvus_filter` as in `search_text` (captions through their image);
        `collapse` applies to image hits only."""
        if target not in (IMAGES, TEXTS):
            raise AladinError(f"search target must be {IMAGES!r} or {TEXTS!r}, got {target!r}")
        query = self.encode_images([image])
        rerank = rerank if target == TEXTS else 0
        return self.search_encoded(target, query, k, rerank, where, milvus_filter, collapse)[0]

    def rerank_depth(self, rerank: int | None) -> int:
        """The depth a search with `rerank` uses: the model's validated default when None."""
        return self.rerank.resolve_depth(rerank)

    @torch.inference_mode()
    def search_encoded(
        self,
        kind: str,
        queries: EncodedQueries,
        k: int,
        rerank: int | None,
        where: Where = None,
        milvus_filter: str | None = None,
        collapse: bool = False,
    ) -> list[list[Hit]]:
        """Both stages for encoded queries against `kind` ("images" for text queries, "texts" for image ones);
        the kNN stage only considers items matching the filters when given, so re-ranking sees only those.
        Re-ranked candidates are ordered by the alignment score plus `fusion` × their kNN score.

        `collapse` (image hits): near-duplicates (`aladin.index.duplicates`) collapse to their first image in kNN
        order, whose `similar` counts the others; more kNN candidates are fetched until `max(k, rerank)` groups are
        found or none are left, and only those representatives are re-ranked (the work stays that of `rerank`)."""
        rerank = self.rerank_depth(rerank)
        if k < 1 or rerank < 0:
            raise AladinError(f"need k >= 1 and rerank >= 0, got k={k}, rerank={rerank}")
        groups = self._groups() if collapse and kind == IMAGES else None
        restrict = (milvus_filter, as_filter(where))
        # the filter's ids, once for every round of candidates and for the size of the collection searched
        matching = None if restrict[1] is None else self.index.meta.matching(kind, restrict[1])
        want = max(k, rerank)
        chosen: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, np.int64), np.empty(0))] * len(queries)
        pending, depth = list(range(len(queries))), want
        while pending:
            found = self._knn(kind, queries.subset(pending), depth, restrict, matching)
            unfinished = []
            for q, (ids, knn) in zip(pending, found, strict=True):
                keep = np.arange(len(ids)) if groups is None else groups.first_of_each(ids)
                if len(keep) < want and len(ids) == depth:  # too few groups, and more candidates exist
                    unfinished.append(q)
                else:
                    chosen[q] = (ids[keep[:want]], knn[keep[:want]])
            pending, depth = unfinished, depth * 2
        direction = CALIBRATED_SEARCHES.get((queries.modality, kind))
        live = int(self.index.manifest["counts"][kind]["live"])
        size = live if matching is None else len(matching)  # the collection searched, for the confidence
        results = []
        for ids, score, knn in self._ranked(kind, queries, chosen, rerank):
            confidence = self._confidence(direction, bool(rerank), score[:k], size)
            results.append(self._hits(kind, ids[:k], score[:k], knn[:k], groups, confidence))
        return results

    def _groups(self) -> GroupIndex:
        if self.duplicates is None:
            raise AladinError(
                "collapse: this model records no near-duplicate threshold (the default was measured for the "
                "bundled model's vectors); give one: --duplicate-threshold T, or Searcher(duplicates="
                "DuplicateConfig(threshold=T)); `aladin index duplicates --threshold T` shows what T groups"
            )
        return duplicate_groups(self.index, self.duplicates)

    def _knn(
        self,
        kind: str,
        queries: EncodedQueries,
        depth: int,
        restrict: tuple[str | None, Filter | None],
        matching: np.ndarray | None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The top `depth` kNN candidates of each query among the items `restrict` (milvus_filter, where)
        allows (`matching`: the ids `where` selects): (ids, kNN scores), best first."""
        vectors = queries.global_vectors.float().cpu().numpy()
        scores, ids = self.index.search(kind, vectors, depth, *restrict, matching=matching)
        found = ids >= 0
        return [(ids[q][found[q]], scores[q][found[q]]) for q in range(len(queries))]

    def _ranked(
        self, kind: str, queries: EncodedQueries, candidates: list[tuple[np.ndarray, np.ndarray]], rerank: int
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each query's candidates (ids, kNN scores) re-ranked when `rerank`: (ids, scores, kNN scores) in ranked
        order."""
        if not rerank:
            return [(ids, knn, knn) for ids, knn in candidates]
        aligned = self._align(kind, queries, [ids for ids, _ in candidates])
        results = []
        for (ids, knn), score in zip(candidates, aligned, strict=True):
            score = score + self.rerank.fusion * knn if self.rerank.fusion else score
            order = np.argsort(-score, kind="stable")
            results.append((ids[order], score[order], knn[order]))
        return results

    def _confidence(
        self, direction: str | None, reranked: bool, scores: np.ndarray, collection: int | None
    ) -> np.ndarray | None:
        """P(true match) of served scores, where the model's calibration covers this search, for the size of the
        collection searched."""
        calibration = self.model.calibration
        if calibration is None or direction is None:
            return None
        return calibration.confidence(direction, reranked, scores, collection)

    @torch.inference_mode()
    def rerank_text(self, query: str, ids: Sequence[int]) -> list[Hit]:
        """Order given images by the alignment head alone (candidates from elsewhere, e.g. a filter)."""
        ids = id_array(ids, self.index.directory)
        missing = self.index.meta.missing(IMAGES, ids.tolist())
        if missing:
            raise AladinError(f"{self.index.directory}: no image with id {missing[0]}")
        score = self._align(IMAGES, self.encode_texts([query]), [ids])[0]
        order = np.argsort(-score, kind="stable")
        return self._hits(IMAGES, ids[order], score[order], None)

    def exhaustive_text(self, query: str, k: int = 10) -> list[Hit]:
        """The alignment head over every image: the slow reference that kNN + re-ranking approximates."""
        return self.exhaustive_encoded(self.encode_texts([query]), k)[0]

    @torch.inference_mode()
    def exhaustive_encoded(
        self, queries: EncodedQueries, k: int, ids: np.ndarray | None = None, batch_size: int = 1024
    ) -> list[list[Hit]]:
        """Alignment scores of text queries with every live image (or only `ids`), `batch_size` images at a time."""
        ids = self.index.meta.ids(IMAGES) if ids is None else np.asarray(ids, dtype=np.int64)
        device = queries.rows.device
        scores = np.empty((len(queries), len(ids)), np.float32)
        for start in range(0, len(ids), batch_size):
            regions, mask = self.index.lookup(IMAGES, ids[start : start + batch_size])
            aligned = region_word_scores(
                regions.to(device),
                mask.to(device),
                queries.rows,
                queries.mask,
                self.model.config.model.word_aggregation,
            )
            scores[:, start : start + len(regions)] = aligned.T.float().cpu().numpy()
        results = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:k]
            results.append(self._hits(IMAGES, ids[order], row[order], None))
        return results

    @torch.inference_mode()
    def explain(self, text: str, item_id: int) -> Explanation:
        """Where each content word of `text` matches in image `item_id`, and the whole text's map (heatmaps)."""
        if self.index.meta.missing(IMAGES, id_array([item_id], self.index.directory).tolist()):
            raise AladinError(f"{self.index.directory}: no image with id {item_id}")
        regions, mask = self.index.lookup(IMAGES, [item_id])
        device = model_device(self.model)
        path = self.index.meta.images([item_id])[item_id].path
        return explain_pair(
            self.model,
            self.text_encoder,
            text,
            regions.to(device),
            mask.to(device),
            boxes=self.index.collection(IMAGES).store.boxes(item_id),
            item_id=int(item_id),
            path=path,
            tags=self._tag_labels(path),
        )

    def _tag_labels(self, path: str) -> list[str]:
        """The classifier tags of an indexed picture, named again from its file (the index keeps their word
        pieces, not their names); none when the model reads no classifier tags or the file is gone."""
        if not self.model.config.image_encoder.classifier_tags:
            return []
        try:
            picture = load_image(path, self.image_encoder.decode_size)
        except DataError:
            return []  # moved since it was indexed: its tag regions are drawn as regions
        return self.image_encoder.tag_labels([picture])[0]

    # ---- helpers --------------------------------------------------------------------------------
    def _align(self, kind: str, queries: EncodedQueries, candidates: list[np.ndarray]) -> list[np.ndarray]:
        """Alignment score of each query with each of its candidates, `pair_batch` pairs at a time.

        A chunk whose queries share most of their candidates (a batch of searches over the same part of the
        collection) is scored all queries × all candidates in one matrix product, when that is at most
        `DENSE_PAIRS` times the pairs asked for: copying each candidate's regions once per query that asks for it
        cost more than the extra products (the same scores, to the bit)."""
        counts = [len(c) for c in candidates]
        device = queries.rows.device
        owner = np.repeat(np.arange(len(candidates)), counts)
        flat = np.concatenate(candidates) if candidates else np.zeros(0, np.int64)
        out = np.empty(len(flat), np.float32)
        aggregation = self.model.config.model.word_aggregation
        # Pairs in candidate order, so that a candidate several queries of a batch share is read once per chunk.
        order = np.argsort(flat, kind="stable")
        for start in range(0, len(flat), self.pair_batch):
            pairs = order[start : start + self.pair_batch]
            wanted, inverse = np.unique(flat[pairs], return_inverse=True)
            asking, asker = np.unique(owner[pairs], return_inverse=True)
            stored, stored_mask = self.index.lookup(kind, wanted)
            stored, stored_mask = stored.to(device), stored_mask.to(device)
            if len(wanted) * len(asking) <= DENSE_PAIRS * len(pairs):
                picked = torch.as_tensor(asking, device=device)
                rows, mask = queries.rows[picked], queries.mask[picked]
                # [wanted, asking]: stored regions against text queries' words, or image queries' regions
                # against stored words
                if kind == IMAGES:
                    every = region_word_scores(stored, stored_mask, rows, mask, aggregation)
                else:
                    every = region_word_scores(rows, mask, stored, stored_mask, aggregation).T
                pair = every[torch.as_tensor(inverse, device=device), torch.as_tensor(asker, device=device)]
            else:
                if len(wanted) < len(pairs):
                    stored, stored_mask = stored[inverse], stored_mask[inverse]
                picked = torch.as_tensor(owner[pairs], device=device)
                rows, mask = queries.rows[picked], queries.mask[picked]
                if kind == IMAGES:  # text queries: stored regions against the query's words
                    pair = paired_region_word_scores(stored, stored_mask, rows, mask, aggregation)
                else:  # image queries: the query's regions against stored words
                    pair = paired_region_word_scores(rows, mask, stored, stored_mask, aggregation)
            out[pairs] = pair.float().cpu().numpy()
        return np.split(out, np.cumsum(counts)[:-1])

    def _hits(
        self,
        kind: str,
        ids: np.ndarray,
        scores: np.ndarray,
        first: np.ndarray | None,
        groups: GroupIndex | None = None,
        confidence: np.ndarray | None = None,
    ) -> list[Hit]:
        ids = [int(i) for i in ids]
        if kind == TEXTS:
            texts = self.index.meta.texts(ids)
            owners = {i: texts[i].image_id for i in ids}
            captions = {i: texts[i].caption for i in ids}
        else:
            owners, captions = {i: i for i in ids}, {}
        images = self.index.meta.images(set(owners.values()))
        return [
            Hit(
                id=i,
                score=float(scores[n]),
                first_stage_score=None if first is None else float(first[n]),
                path=images[owners[i]].path,
                external_id=images[owners[i]].external_id,
                image_id=owners[i],
                caption=captions.get(i),
                similar=0 if groups is None else groups.similar(i),
                confidence=None if confidence is None else round(float(confidence[n]), 4),
            )
            for n, i in enumerate(ids)
        ]


def model_duplicates(model: AladinModel) -> DuplicateConfig | None:
    """The near-duplicate setting a checkpoint records as measured for its vectors (info["duplicates"]), if any."""
    recorded = model.info.get("duplicates") if isinstance(model.info, dict) else None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("threshold"), int | float):
        return None
    return DuplicateConfig(threshold=float(recorded["threshold"]))


def keep_confident(hits: list[Hit], min_score: float | None, model: AladinModel) -> list[Hit]:
    """The hits whose confidence is at least `min_score` (all of them when None); refused when the model has no
    calibration, or `min_score` is not a probability."""
    if min_score is None:
        return hits
    if not 0.0 <= min_score <= 1.0:
        raise AladinError(f"min score {min_score:g}: expected a probability between 0 and 1")
    if model.calibration is None:
        raise AladinError(
            "min score: this model has no calibration, so its hits have no confidence to cut on "
            "(fit one with `aladin calibrate`)"
        )
    if any(hit.confidence is None for hit in hits):
        raise AladinError(
            "min score: this search has no confidence: the model's calibration has no curve for it (curves "
            "cover text → image and image → text searches, re-ranked or kNN only, as fitted; never image → image)"
        )
    return [hit for hit in hits if hit.confidence is not None and hit.confidence >= min_score]
