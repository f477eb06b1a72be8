"""Explanations depend on the word: each content word's own map, stop words and word pieces folded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from index_fixtures import ToyTextEncoder, tiny_model

from aladin.errors import AladinError
from aladin.model.aladin import AladinModel
from aladin.search.explain import content_words, explain_pair, fold_piece_maps, whole_words, word_vectors


class QuietFrameEncoder(ToyTextEncoder):
    """The toy words, with [CLS] and [SEP] that carry nothing (zero features)."""

    def _vector(self, word: str) -> np.ndarray:
        return np.zeros(self.dim) if word in ("[CLS]", "[SEP]") else super()._vector(word)


def washing_model() -> AladinModel:
    """A model whose text transformer washes every word into the caption's mean, as the bundled one nearly does:
    uniform attention (zero queries and keys), values passed through ten times over, no feed-forward."""
    model = tiny_model()
    layer = model.text_encoder.transformer.layers[0]
    dim = model.config.model.embed_dim
    with torch.no_grad():
        model.text_encoder.project.bias.zero_()  # a zero feature stays zero
        layer.self_attn.in_proj_weight.zero_()
        layer.self_attn.in_proj_bias.zero_()
        layer.self_attn.in_proj_weight[2 * dim :] = torch.eye(dim)
        layer.self_attn.out_proj.weight.copy_(10 * torch.eye(dim))
        layer.self_attn.out_proj.bias.zero_()
        layer.linear2.weight.zero_()
        layer.linear2.bias.zero_()
    return model.eval()


def test_word_pieces_fold_into_whole_words_and_stop_words_fold_out() -> None:
    pieces = ["a", "gr", "##izzly", "bear", "on", "the", "grass", ".", "bear"]
    words = whole_words(pieces)
    assert words[:3] == [("a", [0]), ("grizzly", [1, 2]), ("bear", [3])]
    assert content_words([w for w, _ in words]) == ["grizzly", "bear", "grass"]
    assert content_words(["the", "of", "."]) == ["the", "of"]  # a query of stop words still gets maps
    maps = np.arange(len(pieces) * 2, dtype=float).reshape(len(pieces), 2)
    shown, folded = fold_piece_maps(pieces, maps)
    assert shown == ["grizzly", "bear", "grass"]
    np.testing.assert_allclose(folded[0], maps[1:3].mean(axis=0))  # the pieces' mean
    np.testing.assert_allclose(folded[1], (maps[3] + maps[8]) / 2)  # a repeated word: one map


def test_word_boundaries_of_clip_sentencepiece_and_byte_level_tokenizers_fold_too() -> None:
    clip = ["a</w>", "gr", "izzly</w>", "bear</w>", "on</w>", "grass</w>", ".</w>"]  # CLIP's BPE
    siglip = ["▁a", "▁gr", "izzly", "▁bear", "▁on", "▁grass", "▁", "."]  # SentencePiece
    roberta = ["a", "Ġgr", "izzly", "Ġbear", "Ġon", "Ġgrass", "."]  # byte-level BPE
    for pieces in (clip, siglip, roberta):
        words = whole_words(pieces)
        assert [w for w, _ in words][:3] == ["a", "grizzly", "bear"], pieces
        assert words[1][1] == [1, 2]
        assert content_words([w for w, _ in words])[:3] == ["grizzly", "bear", "grass"], pieces


def test_each_content_word_points_at_its_own_region_even_when_the_context_washes_words_together() -> None:
    model, text_encoder = washing_model(), QuietFrameEncoder()
    red, circle = word_vectors(model, text_encoder, ["red", "circle"])
    others = torch.nn.functional.normalize(
        torch.randn(3, len(red), generator=torch.Generator().manual_seed(0))
    )
    regions = torch.cat([red[None], circle[None], others]).unsqueeze(0)
    mask = torch.ones(1, 5, dtype=torch.bool)
    explanation = explain_pair(model, text_encoder, "the red cir ##cle .", regions, mask, None)
    assert explanation.words == ["red", "circle"] and explanation.skipped == ["the", "."]
    assert explanation.similarity.argmax(axis=1).tolist() == [0, 1]  # each word its own region
    # a word's map does not depend on the rest of the text
    alone = explain_pair(model, text_encoder, "red", regions, mask, None)
    np.testing.assert_allclose(explanation.similarity[0], alone.similarity[0], atol=1e-5)
    # the whole text keeps the teacher's reading: its map is its contextual words' mean, its score the teacher's
    assert explanation.query_similarity.shape == (5,)
    with pytest.raises(AladinError, match="empty text"):
        explain_pair(model, text_encoder, "  ", regions, mask, None)


def test_a_word_that_matched_a_tag_region_says_which_tag() -> None:
    model, text_encoder = washing_model(), QuietFrameEncoder()
    red, circle = word_vectors(model, text_encoder, ["red", "circle"])
    others = torch.nn.functional.normalize(
        torch.randn(3, len(red), generator=torch.Generator().manual_seed(0))
    )
    # picture regions first (red among them), then the word pieces of the tags "round thing" and "circle"
    regions = torch.cat([others[:2], red[None], others[2:], circle[None]]).unsqueeze(0)
    mask = torch.ones(1, 5, dtype=torch.bool)
    boxes = np.tile([0.0, 0.0, 1.0, 1.0, 1.0], (5, 1))
    tags = ["round thing", "round thing", "circle"]
    explanation = explain_pair(model, text_encoder, "red circle", regions, mask, boxes, tags=tags)
    assert explanation.region_tags == ["", "", "round thing", "round thing", "circle"]
    assert explanation.word_tags == ["round thing", "circle"]  # red's best region is a tag piece too
    np.testing.assert_array_equal(explanation.picture_regions(), [0, 1])
    only_last = explain_pair(model, text_encoder, "red circle", regions, mask, boxes, tags=["circle"])
    assert only_last.word_tags == ["", "circle"]  # red matched a picture region
    np.testing.assert_array_equal(only_last.picture_regions(), [0, 1, 2, 3])
    untagged = explain_pair(model, text_encoder, "red circle", regions, mask, boxes)
    assert untagged.word_tags == ["", ""] and len(untagged.picture_regions()) == 5
    with pytest.raises(AladinError, match="6 tag regions but only 5"):
        explain_pair(model, text_encoder, "red", regions, mask, boxes, tags=["x"] * 6)
