import math

import torch

from aladin.model.alignment import (
    paired_region_word_scores,
    region_word_scores,
)

E1, E2, E3 = torch.eye(3)
DIAG = torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2)


def _case():
    # image 0: regions e1, diag, and a padded slot holding e3 (must be ignored)
    # image 1: regions e2, e3
    regions = torch.stack([torch.stack([E1, DIAG, E3]), torch.stack([E2, E3, E3])])
    region_mask = torch.tensor([[True, True, False], [True, True, False]])
    # text 0: [CLS]=e3 (masked), e1, e2, padding=e3 (masked)
    # text 1: e3, e3 (both real), padding
    words = torch.stack([torch.stack([E3, E1, E2, E3]), torch.stack([E3, E3, E1, E1])])
    word_mask = torch.tensor([[False, True, True, False], [True, True, False, False]])
    return regions, region_mask, words, word_mask


def test_hand_built_scores_with_masking():
    scores = region_word_scores(*_case())
    s = 1 / math.sqrt(2)
    # image 0 / text 0: e1 → best region e1 (1.0); e2 → best region diag (0.707); mean = (1 + s) / 2.
    # The padded region e3 and the masked [CLS]/padding words must not count.
    # image 0 / text 1: e3 words → best region among e1, diag is 0 → 0.
    # image 1 / text 0: e1 → max(e2·e1, e3·e1) = 0; e2 → 1; mean 0.5.
    # image 1 / text 1: e3 → 1 for both words → 1.
    expected = torch.tensor([[(1 + s) / 2, 0.0], [0.5, 1.0]])
    assert torch.allclose(scores, expected, atol=1e-6)


def test_sum_aggregation_and_masks_matter():
    regions, region_mask, words, word_mask = _case()
    summed = region_word_scores(regions, region_mask, words, word_mask, aggregation="sum")
    assert torch.allclose(summed[1, 0], torch.tensor(1.0))
    unmasked = region_word_scores(regions, torch.ones_like(region_mask), words, torch.ones_like(word_mask))
    assert not torch.allclose(unmasked, region_word_scores(regions, region_mask, words, word_mask))


def test_chunked_and_paired_agree_with_full():
    g = torch.Generator().manual_seed(0)
    regions = torch.nn.functional.normalize(torch.randn(7, 5, 8, generator=g), dim=-1)
    words = torch.nn.functional.normalize(torch.randn(11, 6, 8, generator=g), dim=-1)
    region_mask = torch.rand(7, 5, generator=g) > 0.2
    region_mask[:, 0] = True
    word_mask = torch.rand(11, 6, generator=g) > 0.3
    word_mask[:, 0] = True
    full = region_word_scores(regions, region_mask, words, word_mask)
    chunked = region_word_scores(regions, region_mask, words, word_mask, max_elements=50)
    assert torch.allclose(full, chunked, atol=1e-6)
    i = torch.tensor([0, 3, 6, 6])
    t = torch.tensor([10, 2, 0, 5])
    paired = paired_region_word_scores(regions[i], region_mask[i], words[t], word_mask[t])
    assert torch.allclose(paired, full[i, t], atol=1e-6)
