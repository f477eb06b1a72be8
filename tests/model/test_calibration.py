"""Calibration maps: monotone by construction, fitted closer to the truth than the raw score, saved and loaded
with the checkpoint, malformed files refused in one line."""

import json

import numpy as np
import pytest
import torch
from feature_fixtures import make_features, tiny_config

from aladin.errors import CheckpointError
from aladin.evaluate.calibration import fit_calibration, served_samples
from aladin.model import AladinModel
from aladin.model.calibration import (
    CALIBRATION_FILE,
    IMAGE_TO_TEXT,
    ISOTONIC,
    PLATT,
    TEXT_TO_IMAGE,
    Calibration,
    Curve,
    curve_key,
    expected_calibration_error,
    fit_curve,
    fit_isotonic,
    fit_platt,
)


def noisy_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores on a fused-score scale (about 0..3) whose true match probability is a steep logistic of the score:
    read as a probability (clipped to [0, 1]) the raw score is badly calibrated."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 3, n)
    truth = 1 / (1 + np.exp(-4 * (scores - 2)))
    return scores, (rng.random(n) < truth).astype(float)


def test_pool_adjacent_violators_on_a_hand_worked_example():
    curve = fit_isotonic(np.array([4.0, 1.0, 3.0, 2.0]), np.array([1.0, 0.0, 0.0, 1.0]))
    # sorted: (1, 0) (2, 1) (3, 0) (4, 1); 2 and 3 violate the order and pool into one block of mean 0.5; each
    # block's mean takes 2 pseudo-hits at the overall rate 0.5, so no block of a few hits reads 0% or 100%
    assert curve.scores == (1.0, 2.5, 4.0)
    np.testing.assert_allclose(curve.probabilities, (1 / 3, 1 / 2, 2 / 3))
    np.testing.assert_allclose(curve([0.0, 1.75, 10.0]), [1 / 3, 5 / 12, 2 / 3])


@pytest.mark.parametrize("fitter", [fit_isotonic, fit_platt])
def test_fitted_maps_are_monotone_on_noisy_data(fitter):
    scores, labels = noisy_scores(3000, seed=0)
    labels[::7] = 1 - labels[::7]  # violations everywhere
    grid = np.linspace(-5, 8, 2000)
    assert np.all(np.diff(fitter(scores, labels)(grid)) >= 0)


def test_platt_recovers_a_known_logistic():
    scores, labels = noisy_scores(20000, seed=1)
    curve = fit_platt(scores, labels)
    assert curve.slope == pytest.approx(4, rel=0.1)
    assert -curve.intercept / curve.slope == pytest.approx(2, abs=0.05)


def test_expected_calibration_error_by_hand():
    # bin [0.1, 0.2): mean confidence 0.15, 1 of 2 true → gap 0.35; bin [0.9, 1]: 0.95 vs 1/2 → gap 0.45
    ece = expected_calibration_error(np.array([0.1, 0.2 - 1e-9, 0.95, 0.95]), np.array([1, 0, 1, 0]), bins=10)
    assert ece == pytest.approx((2 * 0.35 + 2 * 0.45) / 4, abs=1e-6)


def test_fitted_curve_is_better_calibrated_than_the_raw_score_on_held_out_data():
    scores, labels = noisy_scores(4000, seed=2)
    curve = fit_curve(scores, labels, np.arange(len(scores)) // 10)
    held_scores, held_labels = noisy_scores(4000, seed=3)
    raw = expected_calibration_error(np.clip(held_scores, 0, 1), held_labels)
    fitted = expected_calibration_error(curve(held_scores), held_labels)
    assert fitted < 0.04 < raw
    assert set(curve.validation["cv_ece"]) == {ISOTONIC, PLATT}
    assert curve.validation["cv_ece"][curve.method] == min(curve.validation["cv_ece"].values())


def calibrated(tmp_path) -> tuple[AladinModel, Calibration]:
    """A tiny model saved with a calibration fitted on its own served hits."""
    torch.manual_seed(0)
    model = AladinModel(tiny_config()).eval()
    model.save_pretrained(tmp_path / "ckpt")
    calibration = fit_calibration(model, make_features(16, seed=0), "tiny features")
    calibration.save(tmp_path / "ckpt")
    return model, calibration


def test_calibration_round_trips_with_the_checkpoint(tmp_path):
    model, calibration = calibrated(tmp_path)
    assert set(calibration.curves) == {
        curve_key(d, r) for d in (TEXT_TO_IMAGE, IMAGE_TO_TEXT) for r in (True, False)
    }
    loaded = AladinModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.calibration == calibration
    scores = np.linspace(-1, 3, 50)
    for key in calibration.curves:
        direction, stage = key.split("/")
        got = loaded.calibration.confidence(direction, stage == "reranked", scores)
        np.testing.assert_array_equal(got, calibration.curves[key](scores))
    # a checkpoint without one still loads, and has none
    model.save_pretrained(tmp_path / "old")
    assert AladinModel.from_pretrained(tmp_path / "old").calibration is None


def test_served_samples_label_each_query_s_own_matches():
    torch.manual_seed(0)
    model = AladinModel(tiny_config()).eval()
    feats = make_features(6, seed=0, captions_per_image=2)
    samples = served_samples(
        model, feats, top_k=6
    )  # every image for a caption, 6 of 12 captions for an image
    t2i = samples[curve_key(TEXT_TO_IMAGE, False)]
    assert len(t2i.scores) == 12 * 6 and t2i.labels.sum() == 12  # each caption's own image is among all 6
    assert np.all(np.diff(t2i.scores.reshape(12, 6), axis=1) <= 0)  # best first, as a search serves them
    i2t = samples[curve_key(IMAGE_TO_TEXT, True)]
    assert len(i2t.scores) == 6 * 6 and 0 < i2t.labels.sum() <= 12


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(format_version=2), "format_version 2 is not supported"),
        (lambda c: c["curves"].update(bogus={}), "unknown curve 'bogus'"),
        (lambda c: c.update(model_fingerprint="0" * 16), "fitted for other weights"),
        (lambda c: c["rerank"].update(fusion=9.0), "fitted for re-rank fusion 9"),
        (
            lambda c: c.update(curves={"text_to_image/knn": {"method": PLATT, "slope": -1, "intercept": 0}}),
            "slope",
        ),
        (
            lambda c: c.update(
                curves={
                    "text_to_image/knn": {"method": ISOTONIC, "scores": [0, 1], "probabilities": [0.9, 0.1]}
                }
            ),
            "must be non-decreasing",
        ),
        (
            lambda c: c.update(
                curves={"text_to_image/knn": {"method": ISOTONIC, "scores": [1, 0], "probabilities": [0, 1]}}
            ),
            "strictly increasing",
        ),
        (
            lambda c: c.update(curves={"text_to_image/knn": {"method": ISOTONIC, "scores": "x"}}),
            "list of numbers",
        ),
        (lambda c: c.update(collections={"text_to_image": 0}), "field 'collections'"),
    ],
)
def test_malformed_calibration_is_refused_in_one_line(tmp_path, edit, message):
    calibrated(tmp_path)
    path = tmp_path / "ckpt" / CALIBRATION_FILE
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=message) as err:
        AladinModel.from_pretrained(tmp_path / "ckpt")
    assert str(tmp_path / "ckpt" / CALIBRATION_FILE) in str(err.value) and "\n" not in str(err.value)


def test_a_file_that_is_not_json_is_refused(tmp_path):
    calibrated(tmp_path)
    (tmp_path / "ckpt" / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(Exception, match="calibration.json: not valid JSON"):
        AladinModel.from_pretrained(tmp_path / "ckpt")
    # what `aladin calibrate` loads to replace it
    assert AladinModel.from_pretrained(tmp_path / "ckpt", calibrated=False).calibration is None


def test_a_curve_maps_scores_outside_its_breakpoints_to_its_ends():
    curve = Curve(ISOTONIC, (0.0, 1.0), (0.2, 0.7))
    assert curve([-5.0, 0.5, 5.0]).tolist() == pytest.approx([0.2, 0.45, 0.7])


def top_hits(collection: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's top 10 of `collection` items: one true match scoring about 1.5, look-alikes about 0
    (scores, labels, query of each hit), so a larger collection puts more look-alikes among the top scores."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.0, 0.6, (queries, collection))
    scores[:, 0] = rng.normal(1.5, 0.5, queries)
    top = np.argsort(-scores, axis=1)[:, :10]
    hit_scores = np.take_along_axis(scores, top, axis=1)
    return hit_scores.ravel(), (top == 0).ravel().astype(float), np.repeat(np.arange(queries), 10)


def test_confidence_follows_the_size_of_the_collection_searched():
    scores, labels, queries = top_hits(collection=50, queries=3000, seed=0)
    curve = fit_curve(scores, labels, queries)
    calibration = Calibration(
        {curve_key(TEXT_TO_IMAGE, False): curve}, 0.0, 0, 10, "x", collections={TEXT_TO_IMAGE: 50}
    )
    at = np.linspace(-1, 3, 9)
    same = calibration.confidence(TEXT_TO_IMAGE, False, at, 50)
    np.testing.assert_array_equal(same, curve(at))  # the collection it was fitted on: the curve as it is
    larger = calibration.confidence(TEXT_TO_IMAGE, False, at, 250)
    odds = lambda p: p / (1 - p)  # noqa: E731
    inside = (same > 1e-3) & (same < 1 - 1e-3)
    np.testing.assert_allclose(odds(larger[inside]), odds(same[inside]) / 5, rtol=1e-6)
    # on a collection five times larger, the shifted confidence is calibrated and the plain curve is not
    big_scores, big_labels, _ = top_hits(collection=250, queries=3000, seed=1)
    plain = expected_calibration_error(curve(big_scores), big_labels)
    shifted = expected_calibration_error(
        calibration.confidence(TEXT_TO_IMAGE, False, big_scores, 250), big_labels
    )
    assert shifted < 0.02 < 0.05 < plain, (shifted, plain)


def test_a_few_true_hits_at_the_top_do_not_read_certain():
    scores = np.concatenate([np.linspace(0, 1, 500), [2.0, 2.1, 2.2]])
    labels = np.concatenate([np.random.default_rng(0).random(500) < 0.1, [1, 1, 1]]).astype(float)
    curve = fit_isotonic(scores, labels)
    assert curve([3.0])[0] < 0.75  # three hits are weak evidence: shrunk towards the overall rate
    calibration = Calibration(
        {curve_key(TEXT_TO_IMAGE, True): curve}, 0.0, 0, 10, "x", collections={TEXT_TO_IMAGE: 200}
    )
    assert calibration.confidence(TEXT_TO_IMAGE, True, np.array([3.0]), 100_000)[0] < 0.01  # a huge library
