"""The distributed tests reuse the index tests' toy encoders and tiny model (tests/index/index_fixtures.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "index"))
