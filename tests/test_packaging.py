"""The floors pyproject.toml claims are the ones the code needs, and CI runs the Python floor."""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def _floor(spec: str) -> tuple[int, ...]:
    match = re.search(r">=\s*([0-9.]+)", spec)
    assert match, f"no >= floor in {spec!r}"
    return tuple(int(part) for part in match.group(1).split("."))


def _dependency_floor(name: str) -> tuple[int, ...]:
    (spec,) = [d for d in _project()["dependencies"] if re.match(rf"{name}\b", d)]
    return _floor(spec)


def test_python_floor_covers_the_standard_library_the_code_calls():
    # index/manifest.py checksums with hashlib.file_digest, new in Python 3.11
    assert _floor(_project()["requires-python"]) >= (3, 11)


def test_the_running_interpreter_is_one_pyproject_allows_and_ci_runs_the_floor():
    floor = _floor(_project()["requires-python"])
    assert sys.version_info[:2] >= floor[:2]
    if os.environ.get("CI") == "true":  # scripts/setup.sh picks the floor's interpreter when it is installed
        assert sys.version_info[:2] == floor[:2], f"CI should test Python {floor}, runs {sys.version_info}"


def test_transformers_floor_has_the_masking_helper_the_text_encoder_calls():
    # encoders/text.py calls transformers.masking_utils.create_bidirectional_mask(inputs_embeds=...): the function
    # first appears in 5.0, with the argument named input_embeds until 5.2 (checked in the released wheels)
    assert _dependency_floor("transformers") >= (5, 2)
    import inspect

    from transformers.masking_utils import create_bidirectional_mask

    assert "inputs_embeds" in inspect.signature(create_bidirectional_mask).parameters
