import pytest

from aladin.config import AladinConfig, RecipeConfig, config_from_dict, config_to_dict
from aladin.errors import AladinError


def test_round_trip_of_nested_configs():
    recipe = RecipeConfig()
    assert config_from_dict(RecipeConfig, config_to_dict(recipe)) == recipe
    assert config_from_dict(AladinConfig, {}) == AladinConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": {"bogus": 1}}, "config.model: unknown field"),
        ({"model": {"embed_dim": "wide"}}, "config.model.embed_dim: expected int"),
        ({"model": {"dropout": True}}, "config.model.dropout: expected float"),
        ({"model": []}, "config.model: expected an object"),
    ],
)
def test_bad_fields_are_named(data, message):
    with pytest.raises(AladinError, match=message):
        config_from_dict(AladinConfig, data)
