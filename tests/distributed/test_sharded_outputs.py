"""Feature extraction and index building split over two gloo ranks write exactly the files one process writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from index_fixtures import ToyImageEncoder, ToyTextEncoder, tiny_model, write_dataset
from spawn_ranks import run_ranks

from aladin.config import ImageEncoderConfig
from aladin.data.folder import load_dataset_folder
from aladin.encoders.cache import extract_features
from aladin.index import IndexConfig, build_index
from aladin.index.builder import BUILDING_DIR

# 7 images and 14 captions per split in batches of 4: the two ranks get unequal shares, and a ragged last batch
BATCH = 4


def extract_and_index(data: Path, out: Path) -> None:
    """What `aladin extract` and `aladin index build` do, with the toy encoders (one process or one rank)."""
    model = tiny_model()
    image_encoder, text_encoder = ToyImageEncoder(ImageEncoderConfig(name="toy-grid")), ToyTextEncoder()
    extract_features(
        load_dataset_folder(data),
        image_encoder,
        text_encoder,
        out / "cache",
        batch_size=BATCH,
        progress=False,
    )
    build_index(
        data,
        model,
        out / "index",
        IndexConfig(batch_size=BATCH),
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        with_texts=True,
        progress=False,
    )


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sharded")
    data = write_dataset(root / "data", 14)
    extract_and_index(data, root / "one")
    run_ranks(extract_and_index, data, root / "two")
    return root / "one", root / "two"


def test_two_rank_extraction_writes_the_same_cache(outputs: tuple[Path, Path]) -> None:
    one, two = outputs
    want = files(one / "cache")
    assert {"train/regions.npy", "test/tokens.npy", "test/meta.json"} <= want.keys()
    assert files(two / "cache") == want  # byte for byte, no shard or progress file left behind


def test_two_rank_index_build_writes_the_same_index(outputs: tuple[Path, Path]) -> None:
    one, two = outputs
    want = files(one / "index")
    assert "manifest.json" in want and not (two / "index" / BUILDING_DIR).exists()
    assert files(two / "index") == want
