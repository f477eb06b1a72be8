"""hf:PATH encoders through the CLI: extract → train → evaluate → index → search → explain on a tiny CLIP folder
(with its zero-training row), a model that learns with a tiny ViT tower, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hf_models import save_clip, save_vit
from PIL import Image, ImageDraw

from aladin import pipeline
from aladin.cli.main import main
from aladin.config import ImageEncoderConfig, ModelConfig, RecipeConfig, TextEncoderConfig, TrainConfig

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 50, 220),
    "yellow": (240, 220, 20),
    "purple": (140, 30, 160),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
    "orange": (250, 140, 0),
}
PLACES = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}
ERROR = "aladin: error:"


def write_squares(root: Path, copies: dict[str, int]) -> Path:
    """A coloured square in one quadrant of a grey picture; its caption names both. `copies` per split, each
    copy of a (colour, place) pair jittered."""
    (root / "images").mkdir(parents=True)
    lines = []
    jitters = iter(range(sum(copies.values())))  # every split draws other copies
    for split, count in copies.items():
        for _ in range(count):
            copy = next(jitters)
            for colour, rgb in COLOURS.items():
                for place, (col, row) in PLACES.items():
                    name = f"{split}-{copy}-{colour}-{place.replace(' ', '-')}.png"
                    image = Image.new("RGB", (64, 64), (100 + 10 * copy, 128, 128))
                    x, y = 2 + 32 * col + copy, 2 + 32 * row + (copy * 3) % 7
                    ImageDraw.Draw(image).rectangle((x, y, x + 22, y + 22), fill=rgb)
                    image.save(root / "images" / name)
                    captions = [f"a {colour} square at the {place}", f"{place}: {colour}"]
                    lines.append({"image": name, "captions": captions, "split": split})
    (root / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[str]]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.startswith(ERROR)]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    """`aladin train` flags for a small, quick run."""
    path = tmp_path_factory.mktemp("recipe") / "recipe.json"
    small = {"model": {"embed_dim": 32, "ff_dim": 64, "global_dim": 32}, "baseline": {"epochs": 2}}
    path.write_text(json.dumps(small))
    return ("--config", str(path), "--alignment-epochs", "2", "--matching-epochs", "1", "--batch-size", "16")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_squares(tmp_path_factory.mktemp("squares"), {"train": 2, "val": 1, "test": 1})


def test_clip_folder_end_to_end(tmp_path, data, recipe, capsys):
    clip = save_clip(tmp_path / "clip")
    encoders = ["--image-encoder", f"hf:{clip}", "--multiscale", "--text-encoder", f"hf:{clip}"]
    cache, run, index = tmp_path / "cache", tmp_path / "run", tmp_path / "index"
    finetune = ("--image-finetune-layers", "1", "--text-finetune-layers", "1")
    assert run_cli(capsys, "extract", data, "--cache", cache, *encoders, *finetune)[0] == 0
    assert run_cli(capsys, "train", "--cache", cache, "--out", run, *recipe)[0] == 0
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["config"]["image_encoder"]["multiscale"] is True  # both scales' tokens went through the tail
    code, out, _ = run_cli(capsys, "evaluate", "--cache", cache, "--run", run, "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and "encoders' own embeddings (zero training)" in rows
    assert "linear global baseline" in rows and "alignment head (teacher, all pairs)" in rows

    model = run / "model"
    assert (
        run_cli(capsys, "index", "build", data, "--model", model, "--out", index, "--split", "test")[0] == 0
    )
    code, out, _ = run_cli(capsys, "search", "a red square", "--index", index, "--k", "3", "--json")
    assert code == 0 and len(json.loads(out)["hits"]) == 3
    picture = next((data / "images").glob("test-*"))
    code, out, _ = run_cli(
        capsys, "explain", "a red square", picture, "--index", index, "--out", tmp_path / "w.png"
    )
    assert code == 0 and (tmp_path / "w.png").is_file() and "alignment score" in out

    save_clip(clip, seed=1)  # the folder now holds other weights: nothing made with the old ones is used
    for model_flag in ((), ("--model", model)):
        code, _, errors = run_cli(capsys, "search", "a red square", "--index", index, *model_flag)
        assert code == 2 and len(errors) == 1 and "now holds" in errors[0]


def test_cache_of_another_encoder_folder_or_other_weights_is_refused(tmp_path, data, recipe, capsys):
    vit, clip = save_vit(tmp_path / "vit", seed=0), save_clip(tmp_path / "clip")
    other = save_vit(tmp_path / "other-vit", seed=0)
    text = ("--text-encoder", f"hf:{clip}")
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert run_cli(capsys, "extract", data, "--cache", cache, "--image-encoder", f"hf:{vit}", *text)[0] == 0
    assert run_cli(capsys, "train", "--cache", cache, "--out", run, *recipe)[0] == 0
    code, out, _ = run_cli(capsys, "evaluate", "--cache", cache, "--run", run, "--json")
    assert code == 0 and not any("zero training" in row["name"] for row in json.loads(out))  # no shared space

    save_vit(vit, seed=1)  # other weights in the same folder: the re-extracted cache no longer fits the model
    assert run_cli(capsys, "extract", data, "--cache", cache, "--image-encoder", f"hf:{vit}", *text)[0] == 0
    code, _, errors = run_cli(capsys, "evaluate", "--cache", cache, "--run", run)
    assert code == 2 and len(errors) == 1 and "image_encoder.revision was 'vit@config-" in errors[0]

    other_cache = tmp_path / "other-cache"
    assert (
        run_cli(capsys, "extract", data, "--cache", other_cache, "--image-encoder", f"hf:{other}", *text)[0]
        == 0
    )
    code, _, errors = run_cli(capsys, "evaluate", "--cache", other_cache, "--run", run)
    assert (
        code == 2 and len(errors) == 1 and "image_encoder.name was" in errors[0] and "other-vit" in errors[0]
    )


def test_learns_with_a_tiny_vit_tower(tmp_path):
    data = write_squares(tmp_path / "data", {"train": 3, "val": 1, "test": 1})
    vit = save_vit(tmp_path / "vit")
    cache = tmp_path / "cache"
    pipeline.extract(data, cache, ImageEncoderConfig(name=f"hf:{vit}"), TextEncoderConfig())
    quick = dict(batch_size=32, lr=2e-3, warmup_steps=10, patience=0)
    recipe = RecipeConfig(
        model=ModelConfig(matching_input="frozen", embed_dim=64, ff_dim=128, global_dim=64),
        alignment=TrainConfig(stage="alignment", epochs=8, **quick),
        matching=TrainConfig(stage="matching", loss="distill+infonce", epochs=4, **quick),
        baseline=TrainConfig(stage="baseline", epochs=1, **quick),
        train_infonce_student=False,
        rerank_k=20,
    )
    pipeline.train(cache, tmp_path / "run", recipe)
    results = {r.name: r.metrics for r in pipeline.evaluate(cache, tmp_path / "run", quiet=True)}
    teacher = results["alignment head (teacher, all pairs)"]
    student = results["matching head (distill+infonce)"]
    # 32 test pictures, 64 captions: chance R@5 is 16 %, chance rsum about 100
    assert teacher["t2i_r5"] > 50 and teacher["rsum"] > 300, teacher
    assert student["rsum"] > 180, student
