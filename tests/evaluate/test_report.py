import io
import json

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from aladin.errors import AladinError
from aladin.evaluate.metrics import ScorerResult
from aladin.evaluate.report import (
    plot_recall_curves,
    print_results,
    results_markdown,
    results_table,
    write_results_json,
)

FULL = {
    "i2t_r1": 50.0,
    "i2t_r5": 80.25,
    "i2t_r10": 90.0,
    "t2i_r1": 40.0,
    "t2i_r5": 70.0,
    "t2i_r10": 82.0,
    "rsum": 412.25,
}
FOLDS = {key: value + 5.0 for key, value in FULL.items()} | {"rsum": 442.25}


def _results() -> list[ScorerResult]:
    rng = np.random.default_rng(0)
    fast = ScorerResult(
        name="global-knn",
        metrics=FULL,
        protocols={"full": FULL, "1k_folds": FOLDS},
        seconds_per_query=0.00001234,
        i2t_ranks=rng.integers(0, 100, 500),
        t2i_ranks=rng.integers(0, 100, 2500),
        notes="distilled",
    )
    slow_metrics = {key: value / 2 for key, value in FULL.items()}
    slow = ScorerResult(
        name="alignment-head",
        metrics=slow_metrics,
        protocols={"full": slow_metrics},
        seconds_per_query=0.5,
        i2t_ranks=rng.integers(0, 20, 500),
        t2i_ranks=rng.integers(0, 20, 2500),
    )
    return [fast, slow]


def test_markdown_has_names_numbers_and_fold_block():
    md = results_markdown(_results(), "COCO 5K")
    assert "COCO 5K" in md
    assert "| Scorer | i2t R@1 |" in md
    assert "| global-knn | 50.0 | 80.2 | 90.0 | 40.0 | 70.0 | 82.0 | 412.2 | 0.0123 |" in md
    assert "| alignment-head | 25.0 |" in md
    assert "206.1 | 500 |" in md  # rsum 206.125 -> 1 decimal; 0.5 s -> 500 ms
    assert "| global-knn (1K folds) |" in md and "442.2" in md
    assert "alignment-head (1K folds)" not in md


def test_rich_table_renders_same_rows():
    table = results_table(_results(), "COCO 5K")
    assert len(table.columns) == 9
    assert table.row_count == 3  # two full rows + one 1K-fold row
    console = Console(file=io.StringIO(), width=200, record=True)
    print_results(_results(), "COCO 5K", console=console)
    text = console.export_text()
    for needle in ("global-knn", "alignment-head", "412.2", "0.0123", "global-knn (1K folds)"):
        assert needle in text


def test_json_round_trips_without_ranks(tmp_path):
    path = tmp_path / "out" / "results.json"
    write_results_json(path, _results(), extra={"config": {"dim": 384}, "timings": {"encode_s": 1.5}})
    data = json.loads(path.read_text())
    assert [r["name"] for r in data["results"]] == ["global-knn", "alignment-head"]
    first = data["results"][0]
    assert set(first) == {"name", "metrics", "protocols", "seconds_per_query", "notes"}
    assert first["metrics"] == FULL
    assert first["protocols"]["1k_folds"]["rsum"] == 442.25
    assert first["notes"] == "distilled"
    assert data["extra"] == {"config": {"dim": 384}, "timings": {"encode_s": 1.5}}
    assert not list(path.parent.glob("*.tmp"))


def test_recall_plot_is_a_real_png(tmp_path):
    path = tmp_path / "curves.png"
    plot_recall_curves(_results(), path, max_k=30)
    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 500 and image.height > 300
    assert not list(tmp_path.glob("*.tmp"))


def test_recall_plot_needs_ranks(tmp_path):
    bare = ScorerResult(name="x", metrics=FULL, protocols={"full": FULL}, seconds_per_query=0.1)
    with pytest.raises(AladinError):
        plot_recall_curves([bare], tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
