"""Encoders are loaded once per session: loading MiniLM alone takes seconds."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from aladin.config import ImageEncoderConfig, TextEncoderConfig  # noqa: E402
from aladin.encoders.image import ImageEncoder, build_image_encoder  # noqa: E402
from aladin.encoders.text import TextEncoder, build_text_encoder  # noqa: E402


@pytest.fixture(scope="session")
def grid_encoder() -> ImageEncoder:
    return build_image_encoder(
        ImageEncoderConfig(multiscale=False)
    )  # the 7×7 grid: 4× faster than the default


@pytest.fixture(scope="session")
def minilm() -> TextEncoder:
    return build_text_encoder(TextEncoderConfig())
