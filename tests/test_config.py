import re
from dataclasses import replace

import pytest

from aladin.config import (
    CHOICES,
    AladinConfig,
    ImageEncoderConfig,
    ModelConfig,
    RecipeConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    recipe_from_saved,
)
from aladin.errors import AladinError


def test_round_trip_of_nested_configs():
    recipe = RecipeConfig()
    assert config_from_dict(RecipeConfig, config_to_dict(recipe)) == recipe
    assert config_from_dict(AladinConfig, {}) == AladinConfig()


def test_train_defaults_to_the_student_on_frozen_features_yet_old_configs_keep_theirs():
    assert RecipeConfig().model.matching_input == "frozen"  # what validation chose (benchmarks/ablation.py)
    assert config_from_dict(RecipeConfig, {}) == RecipeConfig()
    # a checkpoint written before the option existed has no such field: it loads as the model it was
    assert config_from_dict(AladinConfig, {"model": {}}).model.matching_input == "contextual"
    # and so does a run's saved recipe
    assert recipe_from_saved({"model": {"num_layers": 1}}, "recipe.json").model.matching_input == "contextual"
    saved = config_to_dict(RecipeConfig())
    assert recipe_from_saved(saved, "recipe.json") == RecipeConfig()


def test_a_partial_section_keeps_the_rest_of_its_own_defaults():
    recipe = config_from_dict(RecipeConfig, {"model": {"num_layers": 2}, "matching": {"epochs": 3}})
    assert recipe.model.num_layers == 2 and recipe.model.matching_input == "frozen"
    assert recipe.matching == replace(
        RecipeConfig().matching, epochs=3
    )  # still the matching stage's loss, lr…


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": {"bogus": 1}}, "config.model: unknown field"),
        ({"model": {"embed_dim": "wide"}}, "config.model.embed_dim: expected int"),
        ({"model": {"dropout": True}}, "config.model.dropout: expected float"),
        ({"model": []}, "config.model: expected an object"),
        ({"model": {"matching_form": "mixed"}}, "model.matching_form: must be one of pooled, detectors"),
        (
            {"model": {"matching_form": "detectors", "global_pooling": "max"}},
            "model.global_pooling: the detectors form pools its own way",
        ),
        (
            {"model": {"matching_form": "detectors", "matching_layers": 1}},
            "model.matching_layers: the detectors",
        ),
    ],
)
def test_bad_fields_are_named(data, message):
    with pytest.raises(AladinError, match=message):
        config_from_dict(AladinConfig, data)


def test_augmented_views_need_pictures():
    from aladin.config import ImageEncoderConfig

    with pytest.raises(AladinError, match="train_views: augmented views are crops of the pictures"):
        ImageEncoderConfig(name="precomputed", train_views=2)
    with pytest.raises(AladinError, match="train_views: must be at least 1"):
        ImageEncoderConfig(train_views=0)


def test_precomputed_regions_are_recorded_as_single_scale():
    from aladin.config import ImageEncoderConfig

    assert ImageEncoderConfig().multiscale  # the default for CNN grids
    assert not ImageEncoderConfig(name="precomputed").multiscale  # stored regions have no scales


def test_configs_are_frozen():
    import dataclasses

    recipe = RecipeConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.model.embed_dim = 64  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.alignment.lr = 1.0  # type: ignore[misc]
    from aladin.index.config import IndexConfig
    from aladin.service.config import ServiceConfig

    for config, field in ((IndexConfig(), "region_dtype"), (ServiceConfig(), "max_batch")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, field, getattr(config, field))


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_every_choice_of_the_table_is_what_validation_accepts(key):
    section, name = key.split(".")

    def build(value):
        if section == "model":
            return ModelConfig(**{name: value})
        if section == "image_encoder":
            return ImageEncoderConfig(classifier_tags=True, **{name: value})  # checked when tags are on
        return TrainConfig(stage=section, **{name: value})

    for value in CHOICES[key]:
        build(value)  # "detectors" is valid with the default pooling and layers
    with pytest.raises(AladinError, match=re.escape(f"{key}: must be one of {', '.join(CHOICES[key])}")):
        build("bogus")
