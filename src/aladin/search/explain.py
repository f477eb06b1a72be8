"""Explanations: where in an image each content word of a text matches, beside the whole text as scored.

Why not the teacher's own word states: its text transformer mixes every word with the whole caption, so the
contextualised words of one caption point nearly the same way, and their maps over the regions correlate at
0.94 on COCO with the bundled model: every word, "a" and "." included, lit the same places. Here each content
word goes through the same model *alone* (its own word pieces between [CLS] and [SEP]), so its map says where
that word matches and its best cosine says how well; stop words and punctuation are folded out and word pieces
("gr", "##izzly") folded into the whole word. The whole text keeps the teacher's reading: its map is the mean
over its scored words of their cosine with each region, and `score` is the alignment score re-ranking uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from aladin.encoders.text import TextEncoder
from aladin.errors import AladinError
from aladin.model.aladin import AladinModel
from aladin.model.alignment import paired_region_word_scores, word_region_similarity
from aladin.model.features import FeatureTensors, embed_split
from aladin.model.layers import SequenceEncoder

#: Function words that name nothing one could point at in a picture: left out of the per-word maps.
STOP_WORDS = frozenset(
    """a an the this that these those some any each every another
    of on in at to into onto from by with without for about over under above below beside besides near
    between behind through across along around against up down out off inside outside upon
    and or but nor so yet as than then there here while
    is are was were be been being am has have had do does did it its it's they them their he him his she her
    we us our you your i me my which who whom whose what where when""".split()
)
#: Marks a word piece that continues the previous one (BERT WordPiece).
CONTINUATION = "##"
#: Marks the last piece of a word (CLIP's BPE): a piece without it continues into the next one.
END_OF_WORD = "</w>"
#: Mark the first piece of a word (SentencePiece, e.g. SigLIP; byte-level BPE, e.g. RoBERTa).
START_OF_WORD = ("▁", "Ġ")


@dataclass
class Explanation:
    """Why an image matches a text: a map over the regions for each content word and one for the whole text."""

    item_id: int
    path: str
    words: list[str]  # the text's content words, whole (pieces folded), in order, each once: [W]
    similarity: np.ndarray  # [W, R] cosine of each word alone with each real region
    query_similarity: np.ndarray  # [R] the whole text as the teacher reads it: mean cosine of its words
    boxes: np.ndarray | None  # [R, 5] x1, y1, x2, y2, area in 0..1 (None when the index holds no boxes)
    score: float  # the alignment score of the pair (what re-ranking used)
    skipped: list[str]  # words folded out: stop words and punctuation
    #: [R] the object tag each tag region (one of its word pieces) belongs to, "" for a picture region; empty
    #: when the image has no tag regions. Maps are drawn from the picture regions only.
    region_tags: list[str] = field(default_factory=list)
    #: [W] the tag each word matched best when a tag region beat every picture region, else "".
    word_tags: list[str] = field(default_factory=list)

    def picture_regions(self) -> np.ndarray:
        """Indices of the regions that cover a part of the picture (tag regions left out)."""
        return np.array(
            [i for i in range(len(self.query_similarity)) if not self.region_tags or not self.region_tags[i]]
        )


def whole_words(pieces: list[str]) -> list[tuple[str, list[int]]]:
    """Word pieces → whole words, each with the indices of its pieces ("gr", "##izzly" → "grizzly", [i, i+1]),
    whichever way the tokenizer marks word boundaries: WordPiece's "##" continuations, CLIP's "</w>" word ends,
    or SentencePiece's / byte-level BPE's word starts; the marks are left out of the words."""
    ends = any(p.endswith(END_OF_WORD) for p in pieces)
    starts = not ends and any(p.startswith(START_OF_WORD) for p in pieces)
    words: list[tuple[str, list[int]]] = []
    open_word = False  # CLIP: the previous piece did not end its word
    for i, piece in enumerate(pieces):
        if ends:
            continues, text = open_word, piece.removesuffix(END_OF_WORD)
            open_word = not piece.endswith(END_OF_WORD)
        elif starts:
            text = piece.lstrip("".join(START_OF_WORD))
            # punctuation after a word comes unmarked ("grass", "."): it is not part of the word
            continues = not piece.startswith(START_OF_WORD) and any(c.isalnum() for c in text)
        else:
            continues, text = piece.startswith(CONTINUATION), piece.removeprefix(CONTINUATION)
        if continues and words:
            word, indices = words[-1]
            words[-1] = (word + text, [*indices, i])
        else:
            words.append((text, [i]))
    return [(word, indices) for word, indices in words if word]  # a lone start mark is no word


def folded_words(pieces: list[str]) -> list[str]:
    """The whole words of a text's word pieces, in order."""
    return [word for word, _ in whole_words(pieces)]


def is_content_word(word: str) -> bool:
    """A word that can name something in a picture: not a stop word, and not only punctuation."""
    return word.lower() not in STOP_WORDS and any(c.isalnum() for c in word)


def content_words(words: list[str]) -> list[str]:
    """The distinct content words of a text, in order; a text of stop words only keeps its words (a query
    of "the" still gets a map)."""
    kept = [w for w in words if is_content_word(w)] or [w for w in words if any(c.isalnum() for c in w)]
    return list(dict.fromkeys(kept or words))


@torch.inference_mode()
def word_vectors(model: AladinModel, text_encoder: TextEncoder, words: list[str]) -> torch.Tensor:
    """Each word encoded alone through the model's text side: the mean of its pieces' unit vectors, unit
    length ([W, E]); a word of several pieces is one vector."""
    if not words:
        raise AladinError("explain: no words to encode")
    device = next(model.parameters()).device
    batch = text_encoder.encode(list(words)).to(device)
    emb = model.encode_text(batch.tokens, batch.attention_mask, batch.token_mask, with_global=False)
    units = F.normalize(emb.words.float(), dim=-1) * emb.word_mask.unsqueeze(-1)
    return F.normalize(units.sum(dim=1), dim=-1)


@torch.inference_mode()
def explain_pair(
    model: AladinModel,
    text_encoder: TextEncoder,
    text: str,
    regions: torch.Tensor,
    region_mask: torch.Tensor,
    boxes: np.ndarray | None,
    item_id: int = -1,
    path: str = "",
    tags: Sequence[str] = (),
) -> Explanation:
    """`text` against one image's teacher regions ([1, R, E], unit length, as the index stores them): each
    content word's map, the whole text's map and the pair's alignment score. `tags`: the tag name of each tag
    region, which come last among the real regions (`ImageEncoder.tag_labels`)."""
    if not isinstance(text, str) or not text.strip():
        raise AladinError("empty text: give some words to explain")
    device = regions.device
    batch = text_encoder.encode([text]).to(device)
    emb = model.encode_text(batch.tokens, batch.attention_mask, batch.token_mask, with_global=False)
    scored = emb.words[0][emb.word_mask[0]].float()
    if not len(scored):
        raise AladinError(f"text {text!r} has no words the model can score")
    real = regions[0][region_mask[0]].float()
    score = paired_region_word_scores(
        regions, region_mask, emb.words, emb.word_mask, model.config.model.word_aggregation
    )
    words = folded_words(text_encoder.word_pieces(text))
    shown = content_words(words)
    vectors = word_vectors(model, text_encoder, shown).to(device)
    similarity = word_region_similarity(real, vectors).cpu().numpy()
    if len(tags) > len(real):
        raise AladinError(f"explain: {len(tags)} tag regions but only {len(real)} regions")
    region_tags = [""] * (len(real) - len(tags)) + list(tags) if tags else []
    return Explanation(
        item_id=item_id,
        path=path,
        words=shown,
        similarity=similarity,
        # cosines, even when the model scales words by learned weights for its score
        query_similarity=word_region_similarity(real, F.normalize(scored, dim=-1)).mean(dim=0).cpu().numpy(),
        boxes=boxes,
        score=float(score[0]),
        skipped=list(dict.fromkeys(w for w in words if w not in shown)),
        region_tags=region_tags,
        word_tags=[region_tags[int(best)] if region_tags else "" for best in similarity.argmax(axis=1)],
    )


def fold_piece_maps(pieces: list[str], piece_similarity: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Maps of a text's word pieces ([L, R], e.g. the teacher's own contextual word states: the explanation
    before) → the whole content words and their maps, a word's map the mean over its pieces and repeats; for
    comparisons (pointing game, benchmark)."""
    if len(pieces) != len(piece_similarity):
        raise AladinError(f"explain: {len(pieces)} word pieces but {len(piece_similarity)} maps")
    maps: dict[str, list[np.ndarray]] = {}
    for word, indices in whole_words(pieces):
        maps.setdefault(word, []).append(piece_similarity[indices].mean(axis=0))
    shown = content_words(list(maps))
    return shown, np.stack([np.mean(maps[w], axis=0) for w in shown])


def frozen_projection(encoder: SequenceEncoder, features: torch.Tensor) -> torch.Tensor:
    """The model's projection of frozen encoder features without its transformer layers (or positions), unit
    length: how far the maps are the transformer's doing."""
    return F.normalize(encoder.output_norm(encoder.project(encoder.input_norm(features))).float(), dim=-1)


#: The maps `split_word_maps` compares, by the name the reports give them.
ALONE = "each word alone × teacher regions (the explanation)"
CONTEXTUAL = "caption's contextual words × teacher regions (the explanation before)"
FROZEN = "frozen features through the projections, no transformer"


@torch.inference_mode()
def split_word_maps(
    model: AladinModel,
    text_encoder: TextEncoder,
    feats: FeatureTensors,
    captions: list[str],
    batch: int = 256,
) -> dict[str, list[dict[str, np.ndarray]]]:
    """For every caption of a cached split (in its order), each content word's map over its image's real
    regions, by each way of making it (ALONE, CONTEXTUAL, FROZEN): the measurements' common ground."""
    if len(captions) != feats.num_captions:
        raise AladinError(f"explain: {len(captions)} captions for {feats.num_captions} cached ones")
    model.eval()
    device = next(model.parameters()).device
    image, text = embed_split(model, feats, batch, with_global=False)
    frozen_regions = torch.cat(
        [
            frozen_projection(model.image_encoder, model.image_features(feats.image_batch(idx, device)[0]))
            for idx in torch.arange(feats.num_images).split(batch)
        ]
    )
    pieces = [text_encoder.word_pieces(c) for c in captions]
    vocabulary = sorted({w for p in pieces for w in content_words(folded_words(p))})
    chunks = [vocabulary[s : s + batch] for s in range(0, len(vocabulary), batch)]
    vectors = torch.cat([word_vectors(model, text_encoder, chunk) for chunk in chunks])
    alone = dict(zip(vocabulary, vectors, strict=True))
    maps: dict[str, list[dict[str, np.ndarray]]] = {ALONE: [], CONTEXTUAL: [], FROZEN: []}
    for idx in torch.arange(feats.num_captions).split(batch):
        tokens, attention, scored = feats.text_batch(idx, device)
        frozen_words = frozen_projection(model.text_encoder, model.text_features(tokens, attention))
        for row, t in enumerate(idx.tolist()):
            owner = int(feats.caption_image[t])
            keep = image.region_mask[owner]
            regions, flat = image.regions[owner][keep].float(), frozen_regions[owner][keep]
            words = F.normalize(text.words[t][text.word_mask[t]].float(), dim=-1)
            for name, sim in (
                (CONTEXTUAL, words @ regions.T),
                (FROZEN, frozen_words[row][scored[row]] @ flat.T),
            ):
                shown, folded = fold_piece_maps(pieces[t], sim.cpu().numpy())
                maps[name].append(dict(zip(shown, folded, strict=True)))
            shown = content_words(folded_words(pieces[t]))
            maps[ALONE].append({w: (alone[w].to(device) @ regions.T).cpu().numpy() for w in shown})
    return maps
