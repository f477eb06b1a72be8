"""Small models, deterministic toy encoders and tiny datasets shared by the index and search tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aladin.config import AladinConfig, ImageEncoderConfig, ModelConfig, TextEncoderConfig
from aladin.encoders.image import ImageEncoder, RegionBatch, grid_boxes, register_image_encoder
from aladin.encoders.text import TextEncoder, TokenBatch
from aladin.index import IndexConfig, SearchIndex, build_index
from aladin.model.aladin import AladinModel

TOY_IMAGE_ENCODER = "toy-grid"
TOY_TEXT_ENCODER = "toy-words"  # not buildable by name: tests hand a ToyTextEncoder to whatever needs one
VOCABULARY = "a red green blue circle square star on left right of the big small cat dog".split()


class ToyImageEncoder(ImageEncoder):
    """2×2 grid regions: a fixed random projection of each quadrant's 4×4 pixels (fast, deterministic)."""

    def __init__(self, cfg: ImageEncoderConfig, feature_dim: int = 32):
        self.config = cfg
        self._projection = torch.from_numpy(np.random.default_rng(0).normal(size=(48, feature_dim))).float()

    @property
    def feature_dim(self) -> int:
        return self._projection.shape[1]

    @property
    def num_regions(self) -> int:
        return 4

    def encode(self, images: list[Image.Image]) -> RegionBatch:
        pixels = np.stack([np.asarray(img.convert("RGB").resize((8, 8))) for img in images]) / 255.0
        quads = pixels.reshape(len(images), 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(-1, 4, 48)
        regions = torch.from_numpy(quads).float() @ self._projection
        boxes = grid_boxes(2, 2).expand(len(images), -1, -1).clone()
        return RegionBatch(regions, boxes, torch.ones(len(images), 4, dtype=torch.bool))


register_image_encoder(TOY_IMAGE_ENCODER, lambda cfg, device: ToyImageEncoder(cfg))


class ToyTextEncoder(TextEncoder):
    """Whitespace words → a fixed random vector per word, framed by [CLS]/[SEP] like a BERT tokenizer."""

    def __init__(self, dim: int = 24):
        self.config = TextEncoderConfig(name=TOY_TEXT_ENCODER)
        self.dim = dim

    @property
    def feature_dim(self) -> int:
        return self.dim

    def _vector(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
        return np.random.default_rng(seed).normal(size=self.dim)

    def word_pieces(self, text: str) -> list[str]:
        return text.lower().split()

    def lengths(self, texts: list[str]) -> list[int]:
        return [len(self.word_pieces(t)) + 2 for t in texts]

    def encode(self, texts: list[str]) -> TokenBatch:
        width = max(self.lengths(texts))
        tokens = torch.zeros(len(texts), width, self.dim)
        attention = torch.zeros(len(texts), width, dtype=torch.bool)
        for row, text in enumerate(texts):
            words = ["[CLS]", *self.word_pieces(text), "[SEP]"]
            tokens[row, : len(words)] = torch.from_numpy(np.stack([self._vector(w) for w in words])).float()
            attention[row, : len(words)] = True
        scored = attention.clone()
        scored[:, 0] = False
        scored[torch.arange(len(texts)), attention.sum(1) - 1] = False
        return TokenBatch(tokens, scored, attention, torch.zeros(len(texts), width, dtype=torch.long))


def tiny_model(seed: int = 0, text_feature_dim: int = 24) -> AladinModel:
    """A randomly initialised model small enough that every test runs in milliseconds: toy encoders, or MiniLM
    for the text side when `text_feature_dim` is 384."""
    torch.manual_seed(seed)
    text = TextEncoderConfig() if text_feature_dim == 384 else TextEncoderConfig(name=TOY_TEXT_ENCODER)
    config = AladinConfig(
        image_encoder=ImageEncoderConfig(name=TOY_IMAGE_ENCODER),
        text_encoder=text,
        model=ModelConfig(
            image_feature_dim=32,
            text_feature_dim=text_feature_dim,
            embed_dim=16,
            global_dim=16,
            ff_dim=32,
            num_heads=2,
        ),
    )
    return AladinModel(config).eval()


def picture(seed: int) -> Image.Image:
    """A 16×16 picture with blocky random colours (each quadrant differs)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((16, 16), Image.NEAREST)


def write_images(folder: Path, count: int, first_seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{first_seed + i:03d}.png"
        picture(first_seed + i).save(path)
        paths.append(path)
    return paths


def write_dataset(root: Path, count: int, captions_per_image: int = 2) -> Path:
    """A dataset folder: `count` pictures with seeded captions over a small vocabulary."""
    paths = write_images(root / "images", count)
    rng = np.random.default_rng(1)
    lines = []
    for i, path in enumerate(paths):
        captions = [
            " ".join(rng.choice(VOCABULARY, size=rng.integers(3, 7))) for _ in range(captions_per_image)
        ]
        split = "train" if i % 2 else "test"
        lines.append(json.dumps({"image": path.name, "captions": captions, "split": split}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def model() -> AladinModel:
    return tiny_model()


@pytest.fixture
def text_encoder() -> ToyTextEncoder:
    return ToyTextEncoder()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data", 12)


@pytest.fixture
def built(tmp_path: Path, dataset: Path, model: AladinModel, text_encoder: ToyTextEncoder) -> SearchIndex:
    """A Flat index (int8 store, the default) of the toy dataset with its captions."""
    cfg = IndexConfig(batch_size=5)
    return build_index(
        dataset, model, tmp_path / "index", cfg, text_encoder=text_encoder, with_texts=True, progress=False
    )


def indexed_workspace(root: Path, model: torch.nn.Module) -> dict[str, Path]:
    """`model` saved under root, a 6-picture dataset and its index built through the CLI: the paths a CLI or
    service test needs (model, index, one picture of the index to query with)."""
    from aladin.cli.main import main

    model.save_pretrained(root / "model")
    write_dataset(root / "data", 6)
    argv = [
        "index",
        "build",
        str(root / "data"),
        "--model",
        str(root / "model"),
        "--out",
        str(root / "index"),
    ]
    assert main(argv) == 0
    return {
        "model": root / "model",
        "index": root / "index",
        "image": root / "data" / "images" / "img002.png",
    }
