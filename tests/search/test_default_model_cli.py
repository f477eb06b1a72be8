"""A folder of one's own photos, indexed and searched with no --model: the bundled default model does it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from index_fixtures import write_images

from aladin.cli.main import main
from aladin.model.pretrained import default_model_dir


def test_index_search_and_explain_without_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = write_images(tmp_path / "photos", 5)
    index = tmp_path / "index"
    assert main(["index", "build", str(tmp_path / "photos"), "--out", str(index)]) == 0
    manifest = json.loads((index / "manifest.json").read_text())
    assert Path(manifest["model"]["checkpoint"]) == default_model_dir()
    capsys.readouterr()
    assert main(["search", "a red circle", "--index", str(index), "--k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and {Path(h["path"]).name for h in hits} <= {p.name for p in photos}
    out = tmp_path / "heat.png"
    assert main(["explain", "a red circle", str(photos[0]), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
