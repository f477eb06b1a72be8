"""Files written by the release before config schema versions (tests/fixtures/legacy, made by
tests/fixtures/make_legacy.py) still load, through their migrations, with the values they held."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from aladin.config import (
    ImageEncoderConfig,
    ModelConfig,
    RecipeConfig,
    TextEncoderConfig,
    config_to_dict,
    recipe_from_saved,
    recipe_to_saved,
)
from aladin.encoders.cache import load_split
from aladin.errors import AladinError, CheckpointError
from aladin.fileio import read_json
from aladin.migrations import MIGRATIONS, SCHEMA_KEY, SCHEMA_VERSION
from aladin.model import AladinModel
from aladin.model.alignment import region_word_scores
from aladin.model.features import FeatureTensors, embed_split

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
IMAGE = ImageEncoderConfig(multiscale=False)
TEXT = TextEncoderConfig(max_length=12)


def test_a_legacy_checkpoint_scores_the_legacy_cache_as_recorded():
    model = AladinModel.from_pretrained(LEGACY / "checkpoint")
    assert model.config.image_encoder == IMAGE and model.config.text_encoder == TEXT
    assert model.config.model.embed_dim == 16 and model.config.model.matching_input == "contextual"
    assert model.rerank.depth == 20 and model.rerank.fusion == 1.0
    cached = load_split(LEGACY / "cache", "test", IMAGE, TEXT)
    image, text = embed_split(model, FeatureTensors.from_arrays(cached.arrays))
    with torch.no_grad():
        alignment = region_word_scores(
            image.regions, image.region_mask, text.words, text.word_mask, model.config.model.word_aggregation
        )
    expected = json.loads((LEGACY / "expected_scores.json").read_text())
    torch.testing.assert_close(image.global_vector @ text.global_vector.T, torch.tensor(expected["matching"]))
    torch.testing.assert_close(alignment, torch.tensor(expected["alignment"]))


def test_a_legacy_cache_reads_with_its_encoder_configs_migrated():
    cached = load_split(LEGACY / "cache", "test", IMAGE, TEXT)
    assert cached.num_images == 3 and cached.captions[:2] == ["a red picture", "red"]
    assert cached.meta[SCHEMA_KEY] == SCHEMA_VERSION
    assert cached.meta["image_encoder"] == config_to_dict(IMAGE)
    with pytest.raises(CheckpointError, match="text_encoder.max_length was 12 when saved, 40 now"):
        load_split(LEGACY / "cache", "test", IMAGE, TextEncoderConfig())


def test_a_cache_from_before_an_encoder_option_reads_as_what_it_held(tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(LEGACY / "cache", cache)
    meta_path = cache / "test" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["image_encoder"]["train_views"], meta["image_encoder"]["max_tag_tokens"]
    meta_path.write_text(json.dumps(meta))
    assert load_split(cache, "test", IMAGE, TEXT).meta["image_encoder"] == config_to_dict(IMAGE)


def test_a_legacy_run_recipe_drops_the_device_it_ran_on():
    stored = read_json(LEGACY / "run" / "recipe.json")
    assert stored["device"] == "cpu" and SCHEMA_KEY not in stored  # as `aladin train --device cpu` wrote it
    # so resuming that run without --device compares equal to today's default recipe, instead of refusing it
    assert recipe_from_saved(stored, "recipe.json") == RecipeConfig()


def test_a_recipe_from_before_the_student_option_is_the_contextual_student():
    stored = read_json(LEGACY / "run-before-matching-input" / "recipe.json")
    recipe = recipe_from_saved(stored, "recipe.json")
    assert recipe.model == ModelConfig(matching_input="contextual")
    assert recipe.matching == RecipeConfig().matching


def test_a_current_recipe_round_trips_and_a_future_or_incomplete_one_is_refused():
    saved = recipe_to_saved(RecipeConfig(rerank_k=7))
    assert saved[SCHEMA_KEY] == SCHEMA_VERSION
    assert recipe_from_saved(saved, "recipe.json") == RecipeConfig(rerank_k=7)
    with pytest.raises(AladinError, match="config_schema_version 99 is not one this aladin reads"):
        recipe_from_saved({**saved, SCHEMA_KEY: 99}, "recipe.json")
    del saved["model"]["word_weights"]  # a current file lacking a field is damaged, not silently defaulted
    with pytest.raises(AladinError, match=r"recipe.json.model: missing field\(s\) word_weights"):
        recipe_from_saved(saved, "recipe.json")
    assert recipe_from_saved(saved, "recipe.json", partial=True).model.word_weights is False  # --config


def test_a_hand_written_recipe_without_heads_keeps_the_trains_default_student():
    for version in ({}, {SCHEMA_KEY: SCHEMA_VERSION}):
        recipe = recipe_from_saved({**version, "matching": {"epochs": 3}}, "mine.json", partial=True)
        assert recipe == replace(RecipeConfig(), matching=replace(RecipeConfig().matching, epochs=3))


def test_every_document_kind_has_one_migration_per_older_version():
    for kind, steps in MIGRATIONS.items():
        assert sorted(steps) == list(range(SCHEMA_VERSION)), kind


def test_the_bundled_models_recipe_written_before_versions_reads_without_its_device():
    from aladin.model.pretrained import default_model_dir

    stored = read_json(default_model_dir() / "recipe.json")
    assert "device" in stored and SCHEMA_KEY not in stored
    assert recipe_from_saved(stored, "recipe.json").model.matching_input == "frozen"
