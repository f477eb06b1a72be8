"""Fixtures shared with tests/search live in index_fixtures.py (importable from both folders)."""

from index_fixtures import built, dataset, model, text_encoder  # noqa: F401
