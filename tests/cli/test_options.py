"""Flags become configs in one place: defaults, then a recipe file, then explicit flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aladin.cli.options import (
    add_encoder_flags,
    add_recipe_flags,
    add_split_flags,
    encoder_configs,
    recipe_config,
    run_config,
    split_config,
)
from aladin.config import (
    CHOICES,
    DatasetSplitConfig,
    ImageEncoderConfig,
    RecipeConfig,
    RunConfig,
    TextEncoderConfig,
    config_to_dict,
)


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


def test_the_device_is_a_run_setting_not_part_of_the_recipe() -> None:
    on_cpu = _parse(add_recipe_flags, ["--device", "cpu"])
    assert run_config(on_cpu) == RunConfig(device="cpu")
    assert recipe_config(on_cpu) == recipe_config(
        _parse(add_recipe_flags, [])
    )  # so a resume elsewhere matches
    assert run_config(_parse(add_recipe_flags, [])) == RunConfig()


def test_flags_without_values_give_the_dataclasses_defaults() -> None:
    assert encoder_configs(_parse(add_encoder_flags, [])) == (ImageEncoderConfig(), TextEncoderConfig())
    assert split_config(_parse(add_split_flags, [])) == DatasetSplitConfig()


def test_choice_flags_offer_the_config_table() -> None:
    parser = argparse.ArgumentParser()
    add_recipe_flags(parser)
    offered = {a.dest: tuple(a.choices) for a in parser._actions if a.choices}
    assert offered == {
        "alignment_loss": CHOICES["alignment.loss"],
        "matching_loss": CHOICES["matching.loss"],
        "matching_input": CHOICES["model.matching_input"],
        "matching_form": CHOICES["model.matching_form"],
    }


def test_lr_sets_the_alignment_and_matching_stages_as_its_help_says() -> None:
    parser = argparse.ArgumentParser()
    add_recipe_flags(parser)
    (lr,) = [a for a in parser._actions if a.dest == "lr"]
    assert "alignment and matching stages" in lr.help and "linear baseline keeps its own" in lr.help
    recipe = recipe_config(parser.parse_args(["--lr", "0.01"]))
    assert recipe.alignment.lr == recipe.matching.lr == 0.01
    assert recipe.baseline.lr == RecipeConfig().baseline.lr


def test_flag_defaults_are_read_from_the_dataclasses_not_copied(monkeypatch) -> None:
    changed = {
        (ImageEncoderConfig, "finetune_layers"): ("image_finetune_layers", 2),
        (ImageEncoderConfig, "train_views"): ("train_views", 3),
        (ImageEncoderConfig, "max_regions"): ("max_regions", 9),
        (ImageEncoderConfig, "features_path"): ("region_features", "regions.h5"),
        (TextEncoderConfig, "finetune_layers"): ("text_finetune_layers", 1),
        (DatasetSplitConfig, "seed"): ("split_seed", 7),
        (RunConfig, "device"): ("device", "cpu"),
    }
    for (cls, name), (_, value) in changed.items():
        monkeypatch.setattr(cls, name, value)
    parser = argparse.ArgumentParser()
    for adder in (add_encoder_flags, add_split_flags, add_recipe_flags):
        adder(parser)
    args = vars(parser.parse_args([]))
    assert {dest: args[dest] for dest, _ in changed.values()} == dict(changed.values())


def test_hf_encoder_folders_are_recorded_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = _parse(
        add_encoder_flags, ["--image-encoder", "hf:models/clip", "--text-encoder", "hf:models/bert"]
    )
    assert args.image_encoder == f"hf:{tmp_path / 'models' / 'clip'}"  # as typed, from this folder
    assert args.text_encoder == f"hf:{tmp_path / 'models' / 'bert'}"
    assert _parse(add_encoder_flags, []).image_encoder == ImageEncoderConfig.name  # other names as they are


def test_classifier_tags_flag_turns_the_tags_on_with_the_runs_text_encoder(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    argv = ["--classifier-tags", "--no-multiscale"]
    image, text = encoder_configs(_parse(add_encoder_flags, argv))
    assert image.classifier_tags and not image.multiscale and image.max_tag_tokens == 24
    assert image.tags_text_encoder == text.name == "all-MiniLM-L6-v2"
    image, _ = encoder_configs(_parse(add_encoder_flags, [*argv, "--text-encoder", str(folder)]))
    assert image.tags_text_encoder == str(folder)  # the tags are words of the run's own text encoder
    image, _ = encoder_configs(_parse(add_encoder_flags, argv[1:]))
    assert not image.classifier_tags and image.tags_text_encoder == "" and image.max_tag_tokens == 16
