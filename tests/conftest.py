"""Session fixtures shared by every test package."""

from __future__ import annotations

import pytest
from feature_fixtures import make_features

from aladin.model.features import FeatureTensors


@pytest.fixture(scope="session")
def tiny_splits() -> tuple[FeatureTensors, FeatureTensors]:
    return make_features(320, seed=1), make_features(100, seed=2)
