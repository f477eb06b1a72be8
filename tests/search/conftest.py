"""The search tests use the index tests' toy models, encoders and datasets."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "index"))

from index_fixtures import built, dataset, model, text_encoder  # noqa: E402, F401
