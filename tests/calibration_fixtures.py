"""A hand-set calibration for the toy models of the search and service tests: a different logistic per curve, so
a search that read the wrong curve (direction or stage) gets other confidences than the test expects."""

from __future__ import annotations

import numpy as np

from aladin.model.aladin import AladinModel
from aladin.model.calibration import IMAGE_TO_TEXT, PLATT, TEXT_TO_IMAGE, Calibration, Curve, curve_key

#: (slope, intercept) of each curve.
LOGISTICS = {
    curve_key(TEXT_TO_IMAGE, True): (3.0, 0.5),
    curve_key(TEXT_TO_IMAGE, False): (5.0, -1.0),
    curve_key(IMAGE_TO_TEXT, True): (2.0, 1.0),
    curve_key(IMAGE_TO_TEXT, False): (4.0, 0.0),
}


def calibrate(model: AladinModel) -> Calibration:
    """Give `model` the hand-set calibration (as loading a calibration.json would) and return it."""
    model.calibration = Calibration(
        curves={key: Curve(PLATT, slope=a, intercept=b) for key, (a, b) in LOGISTICS.items()},
        fusion=model.rerank.fusion,
        rerank_depth=model.rerank.depth,
        top_k=10,
        model_fingerprint=model.fingerprint(),
    )
    return model.calibration


def expected_confidence(key: str, score: float) -> float:
    """What the curve `key` gives `score`, worked out here rather than through `Curve`."""
    slope, intercept = LOGISTICS[key]
    return round(float(1 / (1 + np.exp(-(slope * score + intercept)))), 4)
