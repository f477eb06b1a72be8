"""Explanations as pictures: where in an image each content word of a text matches (`aladin.search.explain`).

`explain_image` explains any image (not only indexed ones) with the model's own encoders; `render_heatmap` draws
an explanation (from it or from `Searcher.explain`) as a panel for the whole text and one per word. The search
page draws the same maps client-side: each cell is the mean similarity of the regions covering it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aladin.encoders.image import ImageEncoder
from aladin.encoders.text import TextEncoder
from aladin.errors import AladinError
from aladin.fileio import atomic_path
from aladin.index.encoding import model_device
from aladin.model.aladin import AladinModel
from aladin.search.explain import Explanation, explain_pair


@torch.inference_mode()
def explain_image(
    model: AladinModel,
    text_encoder: TextEncoder,
    image_encoder: ImageEncoder,
    text: str,
    image: Image.Image,
    path: str = "",
) -> Explanation:
    """`text` against the regions of `image` encoded now, so the image need not be indexed."""
    if not text.strip():
        raise AladinError("empty text: give some words to explain")
    device = model_device(model)
    pixels = image_encoder.encode([image]).to(device)
    regions = model.encode_image(pixels.regions, pixels.boxes, pixels.region_mask, with_global=False)
    return explain_pair(
        model,
        text_encoder,
        text,
        regions.regions,
        regions.region_mask,
        boxes=pixels.boxes[0][regions.region_mask[0]].cpu().numpy(),
        path=path,
        tags=image_encoder.tag_labels([image])[0],
    )


def region_heat(similarity: np.ndarray, boxes: np.ndarray, cells: int = 64) -> np.ndarray:
    """[R] similarities over [R, 5] boxes → a [cells, cells] map, each cell the mean over the regions covering its
    centre (NaN where none does), so overlapping multi-scale regions average instead of adding up."""
    centres = (np.arange(cells) + 0.5) / cells
    total = np.zeros((cells, cells))
    count = np.zeros((cells, cells))
    for value, (x1, y1, x2, y2) in zip(similarity, boxes[:, :4], strict=True):
        inside = ((centres >= y1) & (centres < y2))[:, None] & ((centres >= x1) & (centres < x2))[None, :]
        total += value * inside
        count += inside
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def render_heatmap(
    image: Image.Image, explanation: Explanation, out: str | Path, words: Sequence[str] | None = None
) -> Path:
    """Save a PNG: the whole text's map, then one panel per content word (or only `words`), all on one colour
    scale, so that a word that matches nothing looks cold beside one that does."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    if explanation.boxes is None:
        raise AladinError("this explanation has no region boxes (the index stored none): nothing to draw")
    unknown = [w for w in words or () if w not in explanation.words]
    if unknown:
        raise AladinError(f"word {unknown[0]!r} is not among the text's words: {' '.join(explanation.words)}")
    chosen = [i for i, w in enumerate(explanation.words) if words is None or w in words]
    if not chosen:
        raise AladinError("no words to draw: name at least one of the text's words")
    picture = explanation.picture_regions()
    maps = [explanation.query_similarity[picture], *explanation.similarity[chosen][:, picture]]
    titles = ["whole text", *(_word_title(explanation, i) for i in chosen)]
    low, high = float(min(m.min() for m in maps)), float(max(m.max() for m in maps))
    cols = min(4, len(maps))
    rows = -(-len(maps) // cols)
    fig = Figure(figsize=(3.2 * cols + 0.8, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    width, height = image.size
    shown = None
    for ax, values, title in zip(axes, maps, titles, strict=False):
        ax.imshow(image)
        shown = ax.imshow(
            region_heat(values, explanation.boxes[picture]),
            extent=(0, width, height, 0),
            cmap="inferno",
            alpha=0.55,
            vmin=low,
            vmax=high,
        )
        ax.set_title(title, fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(shown, ax=list(axes), shrink=0.8, label="cosine with the region")
    fig.suptitle(f"alignment score {explanation.score:.3f}")
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out


def _word_title(explanation: Explanation, word: int) -> str:
    """A word panel's title: its best cosine, and the tag it matched when a tag region did best (e.g.
    "bear  (best 0.83, tag 'brown bear')")."""
    tag = explanation.word_tags[word] if explanation.word_tags else ""
    matched = f", tag {tag!r}" if tag else ""
    return f"{explanation.words[word]}  (best {explanation.similarity[word].max():.2f}{matched})"
