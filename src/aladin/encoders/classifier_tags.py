"""What the bundled CNN's ImageNet classifier names in a picture, as object tags (issue #28).

The names are WordNet's first lemma of each ImageNet-1k class (imagenet_lemmas.txt, shipped with its licence);
`select_tags` keeps those the classifier is confident about, in the whole picture and in single cells, so that a
caption's "bear" can meet a tag "brown bear" in the text encoder's own space.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from aladin.config import ImageEncoderConfig
from aladin.errors import AladinError

NAMES_FILE = Path(__file__).with_name("imagenet_lemmas.txt")


@cache
def imagenet_names() -> tuple[str, ...]:
    """The 1,000 class names in the classifier's index order (comment lines skipped)."""
    names = []
    for number, line in enumerate(NAMES_FILE.read_text(encoding="utf-8").splitlines(), 1):
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].strip():
            raise AladinError(f"{NAMES_FILE}:{number}: expected '<synset id><TAB><name>', got {line!r}")
        names.append(parts[1].strip())
    if len(names) != 1000:
        raise AladinError(f"{NAMES_FILE}: expected 1000 ImageNet class names, got {len(names)}")
    return tuple(names)


@dataclass(frozen=True)
class Tag:
    """One class name kept for a picture, and where it was seen."""

    name: str
    #: Indices of the cells whose top class it is; () for a whole-image tag (named by the pooled map).
    cells: tuple[int, ...] = ()


def select_tags(
    global_logits: torch.Tensor, cell_logits: torch.Tensor, names: tuple[str, ...], cfg: ImageEncoderConfig
) -> list[Tag]:
    """The tags of one picture from its logits ([K] pooled map, [C, K] cells).

    Whole-image tags first: the `tag_global_top` most probable classes with p ≥ `tag_global_min_p`, most
    probable first. Then each cell's top class with p ≥ `tag_cell_min_p`, names ordered by their best cell's
    probability (ties: the first such cell). A name is kept once (the first time it comes; classes sharing a
    lemma, e.g. the bird and the machine "crane", are one tag), at most `max_tags` names in all.
    """
    found: dict[str, list[int]] = {}
    global_p = torch.softmax(global_logits.float(), dim=-1)
    top = torch.topk(global_p, min(cfg.tag_global_top, global_p.shape[-1]))
    for p, k in zip(top.values.tolist(), top.indices.tolist(), strict=True):
        if p >= cfg.tag_global_min_p:
            found.setdefault(names[k], [])
    whole_image = set(found)
    cell_p, cell_k = torch.softmax(cell_logits.float(), dim=-1).max(dim=-1)
    order = sorted(range(len(cell_p)), key=lambda c: (-cell_p[c].item(), c))
    for cell in order:
        if cell_p[cell].item() < cfg.tag_cell_min_p:
            break
        name = names[int(cell_k[cell])]
        if name not in whole_image:
            found.setdefault(name, []).append(cell)
    return [Tag(name, tuple(sorted(cells))) for name, cells in list(found.items())[: cfg.max_tags]]
