from types import SimpleNamespace

import numpy as np
import pytest

from aladin.errors import AladinError
from aladin.evaluate import metrics
from aladin.evaluate.metrics import (
    ScorerResult,
    evaluate_protocols,
    evaluate_scorer,
    fold_metrics,
    i2t_ranks,
    recall_from_ranks,
    retrieval_metrics,
    t2i_ranks,
)

# Image A (0) has 1 caption (c0), image B (1) has 2 (c1, c2), image C (2) has 6 (c3..c8).
CAPTION_IMAGE = np.array([0, 1, 1, 2, 2, 2, 2, 2, 2])
SCORES = np.array(
    [
        #  c0    c1    c2    c3    c4    c5    c6    c7    c8
        [0.50, 0.90, 0.10, 0.60, 0.50, 0.70, 0.80, 0.20, 0.30],  # A
        [0.80, 0.25, 0.75, 0.10, 0.20, 0.75, 0.30, 0.90, 0.00],  # B
        [0.10, 0.20, 0.30, 0.95, 0.05, 0.15, 0.50, 0.60, 0.00],  # C
    ],
    dtype=np.float32,
)
# image -> text (best own caption; only other images' captions count against it):
#   A: c0=0.50; others >= 0.50: c1 .9, c3 .6, c4 .5 (tie), c5 .7, c6 .8              -> rank 5
#   B: best own c2=0.75 (c1=0.25 would give 4); others >= .75: c0 .8, c5 .75 (tie), c7 .9 -> rank 3
#   C: best own c3=0.95; no other caption reaches it                               -> rank 0
EXPECTED_I2T = [5, 3, 0]
# text -> image (other images scoring >= the right one):
#   c0 A=.5: B .8            -> 1      c1 B=.25: A .9          -> 1      c2 B=.75: none -> 0
#   c3 C=.95: none           -> 0      c4 C=.05: A .5, B .2     -> 2      c5 C=.15: A, B -> 2
#   c6 C=.5: A .8            -> 1      c7 C=.6: B .9            -> 1      c8 C=0: A .3, B 0 (tie) -> 2
EXPECTED_T2I = [1, 1, 0, 0, 2, 2, 1, 1, 2]


def test_hand_built_ranks_both_directions():
    np.testing.assert_array_equal(i2t_ranks(SCORES, CAPTION_IMAGE), EXPECTED_I2T)
    np.testing.assert_array_equal(t2i_ranks(SCORES, CAPTION_IMAGE), EXPECTED_T2I)


def test_hand_built_recalls():
    m = retrieval_metrics(SCORES, CAPTION_IMAGE)
    assert list(m) == ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"]
    assert m["i2t_r1"] == pytest.approx(100 / 3)  # only C at rank 0
    assert m["i2t_r5"] == pytest.approx(200 / 3)  # A's rank 5 is the 6th place: a miss at K=5
    assert m["i2t_r10"] == pytest.approx(100.0)
    assert m["t2i_r1"] == pytest.approx(200 / 9)  # c2, c3
    assert m["t2i_r5"] == pytest.approx(100.0)
    assert m["rsum"] == pytest.approx(100 / 3 + 200 / 3 + 100 + 200 / 9 + 100 + 100)


def test_recall_from_ranks_percent():
    assert recall_from_ranks(np.array([0, 1, 4, 5]), ks=(1, 5, 6)) == {1: 25.0, 5: 75.0, 6: 100.0}
    with pytest.raises(AladinError):
        recall_from_ranks(np.array([0]), ks=(0,))
    with pytest.raises(AladinError):
        recall_from_ranks(np.array([], dtype=int))


def test_constant_scorer_is_never_perfect():
    caption_image = np.repeat(np.arange(4), 2)
    scores = np.ones((4, 8), dtype=np.float32)
    np.testing.assert_array_equal(t2i_ranks(scores, caption_image), [3] * 8)  # all 3 other images tie
    np.testing.assert_array_equal(i2t_ranks(scores, caption_image), [6] * 4)  # all 6 other captions tie
    m = retrieval_metrics(scores, caption_image)
    assert m["i2t_r1"] == 0.0
    assert m["t2i_r1"] == 0.0


def test_tie_with_one_wrong_item_ranks_second():
    caption_image = np.array([0, 1, 2])
    scores = np.array(
        [
            [0.5, 0.5, 0.1],  # image 0: own c0 ties with c1 -> rank 1
            [0.5, 0.9, 0.0],  # c0: right image 0 (0.5) ties with image 1 -> rank 1
            [0.0, 0.0, 0.9],
        ],
        dtype=np.float32,
    )
    assert t2i_ranks(scores, caption_image)[0] == 1
    assert i2t_ranks(scores, caption_image)[0] == 1


def _naive_t2i(scores, caption_image):
    out = []
    for t, img in enumerate(caption_image):
        column = scores[:, t]
        out.append(sum(column[j] >= column[img] for j in range(scores.shape[0]) if j != img))
    return np.array(out)


def _naive_i2t(scores, caption_image):
    out = []
    for i in range(scores.shape[0]):
        own = caption_image == i
        other_scores = scores[i, ~own]
        out.append(min(int((other_scores >= s).sum()) for s in scores[i, own]))
    return np.array(out)


def test_chunked_matches_naive_on_random_matrix_with_ties():
    rng = np.random.default_rng(0)
    n_images, n_captions = 300, 1500
    # Every image gets a caption, the rest are spread at random and the order is shuffled.
    caption_image = np.concatenate([np.arange(n_images), rng.integers(0, n_images, n_captions - n_images)])
    rng.shuffle(caption_image)
    # Few distinct values, so ties are everywhere.
    scores = rng.integers(0, 20, size=(n_images, n_captions)).astype(np.float32)
    np.testing.assert_array_equal(
        t2i_ranks(scores, caption_image, chunk_size=7), _naive_t2i(scores, caption_image)
    )
    np.testing.assert_array_equal(
        i2t_ranks(scores, caption_image, chunk_size=7), _naive_i2t(scores, caption_image)
    )


@pytest.mark.parametrize(
    ("scores", "caption_image"),
    [
        (np.ones((2, 3), dtype=np.float32), np.array([0, 1])),  # wrong length
        (np.ones((2, 3), dtype=np.float32), np.array([0, 1, 2])),  # index out of range
        (np.ones((3, 3), dtype=np.float32), np.array([0, 1, 1])),  # image 2 has no caption
        (np.array([[np.nan, 1.0], [1.0, 1.0]], dtype=np.float32), np.array([0, 1])),
        (np.ones((2, 2), dtype=np.float32), np.array([0.0, 1.0])),  # float indices
    ],
)
def test_bad_inputs_raise(scores, caption_image):
    with pytest.raises(AladinError):
        t2i_ranks(scores, caption_image)


def _fold_case():
    """10 images x 2 captions; off-fold scores are high so only per-fold search can do well."""
    caption_image = np.repeat(np.arange(10), 2)
    scores = np.full((10, 20), 10.0, dtype=np.float32)
    perfect = [[1, 1, 0, 0], [0, 0, 1, 1]]
    # t2i ranks 0,1,0,0 -> R@1 75; i2t: image 0 best c0=1 > c2,c3=.5, image 1 best 1 > c0=0,c1=.5 -> R@1 100
    partial = [[1, 0, 0.5, 0.5], [0, 0.5, 1, 1]]
    # every caption prefers the other image (t2i rank 1); each image's 2 captions lose to 2 others (rank 2)
    reversed_ = [[0, 0, 1, 1], [1, 1, 0, 0]]
    for fold, block in enumerate([perfect, perfect, partial, reversed_, reversed_]):
        scores[2 * fold : 2 * fold + 2, 4 * fold : 4 * fold + 4] = block
    return scores, caption_image


def test_fold_metrics_hand_computed_mean():
    scores, caption_image = _fold_case()
    m = fold_metrics(scores, caption_image, n_folds=5)
    assert m["i2t_r1"] == pytest.approx((100 + 100 + 100 + 0 + 0) / 5)
    assert m["t2i_r1"] == pytest.approx((100 + 100 + 75 + 0 + 0) / 5)
    for key in ("i2t_r5", "i2t_r10", "t2i_r5", "t2i_r10"):
        assert m[key] == pytest.approx(100.0)
    # fold rsums 600, 600, 575, 400, 400
    assert m["rsum"] == pytest.approx(515.0)
    # Searching all 10 images together is much worse: the off-fold 10.0 scores win everything
    # except t2i R@10, which any ranking of 10 images gets.
    assert retrieval_metrics(scores, caption_image)["rsum"] == pytest.approx(100.0)


def test_fold_metrics_indivisible_raises():
    scores, caption_image = _fold_case()
    with pytest.raises(AladinError):
        fold_metrics(scores, caption_image, n_folds=3)


def test_protocols_add_1k_folds_only_for_5k_images():
    assert list(evaluate_protocols(SCORES, CAPTION_IMAGE)) == ["full"]
    n = 5000
    protocols = evaluate_protocols(np.eye(n, dtype=np.float32), np.arange(n))
    assert set(protocols) == {"full", "1k_folds"}
    assert protocols["full"]["rsum"] == pytest.approx(600.0)
    assert protocols["1k_folds"]["rsum"] == pytest.approx(600.0)


def test_evaluate_scorer_times_and_keeps_ranks():
    result = evaluate_scorer("hand", lambda: SCORES, CAPTION_IMAGE, notes="toy")
    assert isinstance(result, ScorerResult)
    assert result.metrics == retrieval_metrics(SCORES, CAPTION_IMAGE)
    assert result.protocols == {"full": result.metrics}
    assert result.seconds_per_query >= 0
    np.testing.assert_array_equal(result.i2t_ranks, EXPECTED_I2T)
    np.testing.assert_array_equal(result.t2i_ranks, EXPECTED_T2I)
    assert set(result.to_json()) == {"name", "metrics", "protocols", "seconds_per_query", "notes"}


def test_evaluate_scorer_divides_by_num_queries(monkeypatch):
    # Scoring takes 2 s on a fake clock; the default query count is 9 captions + 3 images.
    clock = iter([10.0, 12.0, 20.0, 22.0])
    monkeypatch.setattr(metrics, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    assert evaluate_scorer("x", lambda: SCORES, CAPTION_IMAGE).seconds_per_query == pytest.approx(2.0 / 12)
    assert evaluate_scorer("x", lambda: SCORES, CAPTION_IMAGE, 4).seconds_per_query == pytest.approx(0.5)
