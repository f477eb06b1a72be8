"""`aladin --help` and `--version` answer without loading the heavy libraries; help shows defaults; commands do
not print the text encoder's "Loading weights" bar."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aladin.config import TextEncoderConfig
from aladin.index.config import IndexConfig

HEAVY = ("torch", "transformers", "faiss", "numpy")

# Runs the CLI in a fresh interpreter, then says which heavy modules the parser pulled in.
PROBE = f"""
import sys
from aladin.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("LOADED", [name for name in {HEAVY!r} if name in sys.modules], file=sys.stderr)
"""


def _probe(*argv: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True)
    assert result.stderr.strip().splitlines()[-1] == "LOADED []", result.stderr
    return result


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["index", "build", "--help"], ["search", "--help"], ["serve", "--help"]],
)
def test_help_and_version_load_no_heavy_library(argv: list[str]) -> None:
    assert _probe(*argv).stdout.strip()


def test_help_shows_defaults() -> None:
    out = " ".join(_probe("index", "build", "--help").stdout.split())  # argparse wraps lines
    defaults = IndexConfig()
    for value in (defaults.factory, defaults.batch_size, defaults.region_dtype):
        assert f"(default: {value})" in out
    assert "(default: None)" not in out and "(default: False)" not in out
    assert "(default: 1500)" in " ".join(_probe("generate-demo-data", "--help").stdout.split())


def test_loading_the_text_encoder_prints_no_progress_bar(capfd: pytest.CaptureFixture[str]) -> None:
    from transformers.utils import logging as hf_logging

    from aladin.encoders.text import HFTextEncoder

    HFTextEncoder(TextEncoderConfig())
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # put back as it was
