from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from index_fixtures import ToyImageEncoder, ToyTextEncoder, picture

from aladin.errors import AladinError, DataError
from aladin.index import IMAGES, TEXTS, SearchIndex, build_index
from aladin.model.aladin import AladinModel
from aladin.model.alignment import paired_region_word_scores
from aladin.search import Searcher
from aladin.search import searcher as searcher_module


@pytest.fixture
def searcher(built: SearchIndex, model: AladinModel, text_encoder: ToyTextEncoder) -> Searcher:
    return Searcher(built, model, text_encoder, ToyImageEncoder(model.config.image_encoder))


def reference_scores(searcher: Searcher, query: str) -> tuple[np.ndarray, np.ndarray]:
    """kNN and alignment scores of every image, computed directly from the model and the stored regions."""
    with torch.inference_mode():
        batch = searcher.text_encoder.encode([query])
        text = searcher.model.encode_text(batch.tokens, batch.attention_mask, batch.token_mask)
        ids = np.arange(len(searcher.index))
        regions, mask = searcher.index.lookup(IMAGES, ids)
        n = len(ids)
        aligned = paired_region_word_scores(
            regions, mask, text.words.expand(n, -1, -1), text.word_mask.expand(n, -1)
        ).numpy()
        vectors = searcher.index.collection(IMAGES).vectors.cpu
        stored = np.stack([vectors.index.reconstruct(int(i)) for i in ids])
        knn = stored @ text.global_vector[0].numpy()
    return knn, aligned


def test_rerank_orders_the_knn_candidates_by_the_alignment_head(searcher: Searcher) -> None:
    query = "red circle on the left of the dog"
    knn, aligned = reference_scores(searcher, query)
    candidates = set(np.argsort(-knn)[:6].tolist())
    hits = searcher.search_text(query, k=4, rerank=6)
    expected = sorted(candidates, key=lambda i: -aligned[i])[:4]
    assert [h.id for h in hits] == expected
    np.testing.assert_allclose([h.score for h in hits], aligned[expected], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([h.first_stage_score for h in hits], knn[expected], rtol=1e-5, atol=1e-6)
    assert all(h.path.endswith(f"img{h.id:03d}.png") and h.image_id == h.id for h in hits)

    # re-ranking everything is the exhaustive alignment search
    everything = searcher.search_text(query, k=12, rerank=12)
    assert [h.id for h in everything] == [h.id for h in searcher.exhaustive_text(query, k=12)]
    assert [h.id for h in searcher.rerank_text(query, sorted(candidates))] == sorted(
        candidates, key=lambda i: -aligned[i]
    )


def _with_choice(model: AladinModel, k: int, fusion: float, helps: bool) -> AladinModel:
    model.info = {
        "rerank": {"k": k, "fusion": fusion, "val_rsum": 2.0 if helps else 1.0, "matching_val_rsum": 1.5}
    }
    return model


def test_searches_use_the_rerank_setting_chosen_on_validation(
    built: SearchIndex, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    query = "red circle on the left of the dog"
    searcher = Searcher(built, _with_choice(model, 6, 2.0, helps=True), text_encoder)
    knn, aligned = reference_scores(searcher, query)
    fused = aligned + 2.0 * knn
    expected = sorted(np.argsort(-knn)[:6].tolist(), key=lambda i: -fused[i])[:4]
    hits = searcher.search_text(query, k=4)  # no depth given: the validated one, fused with the kNN score
    assert [h.id for h in hits] == expected
    np.testing.assert_allclose([h.score for h in hits], fused[expected], rtol=1e-5, atol=1e-5)
    # where validation said re-ranking does not help, a plain search is kNN only
    plain = Searcher(built, _with_choice(model, 6, 2.0, helps=False), text_encoder).search_text(query, k=4)
    assert [h.id for h in plain] == np.argsort(-knn)[:4].tolist()
    assert all(h.score == h.first_stage_score for h in plain)


def test_rerank_zero_is_the_knn_order(searcher: Searcher) -> None:
    query = "blue square"
    knn, _ = reference_scores(searcher, query)
    hits = searcher.search_text(query, k=5, rerank=0)
    assert [h.id for h in hits] == np.argsort(-knn, kind="stable")[:5].tolist()
    assert all(h.score == h.first_stage_score for h in hits)


def test_batched_queries_match_single_ones(searcher: Searcher) -> None:
    queries = ["red circle", "a big cat on the right of a small green star", "dog"]
    batched = searcher.search_texts(queries, k=5, rerank=8)
    for query, hits in zip(queries, batched, strict=True):
        single = searcher.search_text(query, k=5, rerank=8)
        assert [h.id for h in hits] == [h.id for h in single]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in single], atol=1e-5)


@pytest.mark.parametrize("kind", [IMAGES, TEXTS])
def test_rerank_scores_shared_candidates_at_once_as_it_scores_pairs(
    searcher: Searcher, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose queries share candidates is re-ranked all queries × all candidates; the scores and order
    are those of scoring each (query, candidate) pair alone."""
    if kind == IMAGES:
        queries = searcher.encode_texts(["red circle", "a big cat on the right of a small green star", "dog"])
    else:
        queries = searcher.encode_images([picture(seed) for seed in range(3)])

    def search(dense_pairs: float) -> list[list]:
        monkeypatch.setattr(searcher_module, "DENSE_PAIRS", dense_pairs)
        return searcher.search_encoded(kind, queries, k=6, rerank=10)

    paired, dense = search(0), search(float("inf"))
    for one, other in zip(paired, dense, strict=True):
        assert [h.id for h in one] == [h.id for h in other]
        np.testing.assert_allclose([h.score for h in one], [h.score for h in other], rtol=1e-6, atol=1e-6)


def test_image_queries(searcher: Searcher, dataset: Path) -> None:
    similar = searcher.search_image(dataset / "images" / "img004.png", k=3)
    assert similar[0].id == 4 and similar[0].score == pytest.approx(1.0, abs=1e-5)
    assert searcher.search_image(picture(4), k=1)[0].id == 4

    captions = searcher.search_image(picture(4), k=5, rerank=10, target=TEXTS)
    assert len(captions) == 5 and all(h.caption for h in captions)
    assert [h.score for h in captions] == sorted((h.score for h in captions), reverse=True)
    texts = searcher.index.meta.texts([h.id for h in captions])
    assert all(texts[h.id].image_id == h.image_id and texts[h.id].caption == h.caption for h in captions)


def test_bad_queries_give_clear_errors(searcher: Searcher, tmp_path: Path) -> None:
    for query in ("", "   \n\t"):
        with pytest.raises(AladinError, match="empty query"):
            searcher.search_text(query)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg: cannot read image"):
        searcher.search_image(broken)
    with pytest.raises(DataError, match="missing.png: cannot read image"):
        searcher.search_image(tmp_path / "missing.png")
    with pytest.raises(AladinError, match="need k >= 1"):
        searcher.search_text("dog", k=0)
    with pytest.raises(AladinError, match="search target"):
        searcher.search_image(picture(0), target="videos")
    with pytest.raises(AladinError, match="no image with id 99"):
        searcher.explain("dog", 99)


def test_image_to_text_needs_indexed_captions(
    tmp_path: Path, dataset: Path, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    index = build_index(dataset, model, tmp_path / "images-only", progress=False)
    searcher = Searcher(index, model, text_encoder, ToyImageEncoder(model.config.image_encoder))
    with pytest.raises(AladinError, match="no texts.*--with-texts"):
        searcher.search_image(picture(1), target=TEXTS)


def test_explain_gives_word_by_region_similarities(searcher: Searcher) -> None:
    explanation = searcher.explain("Red circle on the left", 5)
    assert explanation.words == ["red", "circle", "left"] and explanation.skipped == ["on", "the"]
    assert explanation.similarity.shape == (3, 4) and explanation.boxes.shape == (4, 5)
    assert explanation.query_similarity.shape == (4,)
    assert max(np.abs(explanation.similarity).max(), np.abs(explanation.query_similarity).max()) <= 1.0 + 1e-5
    hit = searcher.rerank_text("Red circle on the left", [5])[0]
    assert hit.score == pytest.approx(explanation.score, abs=1e-5) and hit.first_stage_score is None


def test_a_jpeg_query_is_decoded_as_the_build_decodes_it(
    searcher: Searcher, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from aladin.data.images import load_image

    photo = tmp_path / "noisy.jpg"  # large enough for a 1/8 draft decode, noisy enough that it shows
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8)).save(photo)
    monkeypatch.setattr(searcher.image_encoder, "decode_size", (8, 8), raising=False)
    as_built = searcher.encode_images([load_image(photo, (8, 8))])
    assert torch.equal(searcher.encode_images([photo]).rows, as_built.rows)
    assert not torch.equal(searcher.encode_images([load_image(photo)]).rows, as_built.rows)  # full decode


def test_hits_carry_the_confidence_of_the_curve_for_their_search(searcher: Searcher, dataset: Path) -> None:
    from calibration_fixtures import calibrate, expected_confidence

    from aladin.search.searcher import keep_confident

    assert all(h.confidence is None for h in searcher.search_text("red circle", k=4))  # no calibration
    calibrate(searcher.model)
    searches = {
        "text_to_image/reranked": searcher.search_text("red circle", k=4, rerank=8),
        "text_to_image/knn": searcher.search_text("red circle", k=4, rerank=0),
        "image_to_text/reranked": searcher.search_image(
            dataset / "images" / "img003.png", 4, 6, target=TEXTS
        ),
        "image_to_text/knn": searcher.search_image(dataset / "images" / "img003.png", 4, 0, target=TEXTS),
    }
    for key, hits in searches.items():
        assert [h.confidence for h in hits] == [expected_confidence(key, h.score) for h in hits], key
    similar = searcher.search_image(dataset / "images" / "img003.png", k=3)
    assert all(h.confidence is None for h in similar)  # image → image: no ground truth to calibrate on
    hits = searches["text_to_image/reranked"]
    cut = sorted(h.confidence for h in hits)[1]
    assert keep_confident(hits, cut, searcher.model) == [h for h in hits if h.confidence >= cut]
    assert len(keep_confident(hits, cut, searcher.model)) == 3
    with pytest.raises(AladinError, match="has no confidence.*never image → image"):
        keep_confident(similar, 0.5, searcher.model)
    with pytest.raises(AladinError, match="between 0 and 1"):
        keep_confident(hits, 1.5, searcher.model)
    searcher.model.calibration = None
    with pytest.raises(AladinError, match="no calibration"):
        keep_confident(hits, 0.5, searcher.model)


def test_confidence_follows_the_size_of_the_collection_a_search_reads(searcher: Searcher) -> None:
    from dataclasses import replace

    from calibration_fixtures import calibrate, expected_confidence

    fitted = 100  # the fitting split had 100 images: an index of 12 (or 4 of them, filtered) holds fewer look-alikes
    searcher.model.calibration = replace(calibrate(searcher.model), collections={"text_to_image": fitted})
    live = len(searcher.index)
    try:
        for where, size in ((None, live), ("id<4", 4)):
            for hit in searcher.search_text("red circle", k=3, rerank=0, where=where):
                p = expected_confidence("text_to_image/knn", hit.score)
                shifted = 1 / (1 + (1 - p) / p * size / fitted)  # the odds scale with fitted / searched
                assert hit.confidence == pytest.approx(shifted, abs=1e-3), (where, size)
    finally:
        searcher.model.calibration = None
