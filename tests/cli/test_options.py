"""Flags become configs in one place: defaults, then a recipe file, then explicit flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aladin.cli.options import add_encoder_flags, add_recipe_flags, encoder_configs, recipe_config
from aladin.config import RecipeConfig, config_to_dict


def _parse(adder, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    adder(parser)
    return parser.parse_args(argv)


def test_model_flags_override_the_recipe_file(tmp_path: Path) -> None:
    file = tmp_path / "recipe.json"
    base = config_to_dict(RecipeConfig())
    base["model"]["num_layers"] = 2
    file.write_text(json.dumps(base))
    recipe = recipe_config(
        _parse(add_recipe_flags, ["--config", str(file), "--matching-input", "contextual", "--word-weights"])
    )
    assert recipe.model.matching_form == "pooled"
    assert recipe.model.num_layers == 2  # from the file
    assert recipe.model.matching_input == "contextual" and recipe.model.word_weights  # from the flags
    assert recipe_config(_parse(add_recipe_flags, [])) == RecipeConfig()
    detectors = recipe_config(_parse(add_recipe_flags, ["--matching-form", "detectors"]))
    assert detectors.model.matching_form == "detectors"


def test_object_tags_flag_names_the_text_encoder_for_the_tags() -> None:
    argv = ["--image-encoder", "precomputed", "--region-features", "feats", "--object-tags"]
    image, text = encoder_configs(_parse(add_encoder_flags, argv))
    assert image.tags_text_encoder == text.name == "all-MiniLM-L6-v2"
    image, _ = encoder_configs(_parse(add_encoder_flags, argv[:4]))
    assert image.tags_text_encoder == ""


def test_train_views_flag_reaches_the_image_encoder_config() -> None:
    image, _ = encoder_configs(_parse(add_encoder_flags, ["--train-views", "3"]))
    assert image.train_views == 3
    image, _ = encoder_configs(_parse(add_encoder_flags, []))
    assert image.train_views == 1


def test_a_saved_recipe_from_before_the_student_option_reads_as_the_contextual_student(
    tmp_path: Path,
) -> None:
    saved = config_to_dict(RecipeConfig())
    del saved["model"]["matching_input"]  # as runs wrote it before the option existed
    file = tmp_path / "recipe.json"
    file.write_text(json.dumps(saved))
    assert (
        recipe_config(_parse(add_recipe_flags, ["--config", str(file)])).model.matching_input == "contextual"
    )
