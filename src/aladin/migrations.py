"""Schema versions of the configs aladin saves, and one explicit migration per version.

Three documents carry a config: a checkpoint's config.json ("config", the model's `AladinConfig`), a run's
recipe.json (`RecipeConfig`) and a feature cache split's meta.json (its encoders' configs). Each records
`SCHEMA_KEY`; a file without it is version 0 (everything written before versions existed). Reading a file runs
the migrations from its version up to `SCHEMA_VERSION`, so the dataclasses only ever read complete, current
dicts. To change a saved field: bump `SCHEMA_VERSION` and add one function per document kind below.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from aladin.errors import AladinError

SCHEMA_VERSION = 2
#: Where a document records its config schema version (top level of recipe.json, the checkpoint header and
#: the cache meta.json).
SCHEMA_KEY = "config_schema_version"

Migration = Callable[[dict[str, Any]], dict[str, Any]]

# What a field absent from a version-0 file means: the value it had before the field existed, written down
# once here so that later changes of a dataclass default never change how an old file reads.
_V0_IMAGE_ENCODER = {
    "name": "efficientnet-lite0",
    "image_size": 224,
    "multiscale": True,
    "finetune_layers": 0,
    "features_path": "",
    "max_regions": 0,
    "tags_text_encoder": "",
    "max_tag_tokens": 16,
    "train_views": 1,
    "revision": "",  # hf:PATH folders came later; the bundled encoders record none
}
_V0_TEXT_ENCODER = {"name": "all-MiniLM-L6-v2", "max_length": 40, "finetune_layers": 0, "revision": ""}
_V0_MODEL = {
    "image_feature_dim": 1280,
    "text_feature_dim": 384,
    "box_dim": 5,
    "embed_dim": 256,
    "global_dim": 256,
    "num_layers": 1,
    "matching_layers": 0,
    "num_heads": 4,
    "ff_dim": 1024,
    "dropout": 0.1,
    "word_aggregation": "mean",
    "global_pooling": "mean",
    # models and runs from before the option existed trained the contextual student
    "matching_input": "contextual",
    "matching_form": "pooled",
    "word_weights": False,
}
_V0_TRAIN = {
    "epochs": 20,
    "batch_size": 128,
    "weight_decay": 1e-4,
    "warmup_steps": 100,
    "grad_clip": 2.0,
    "seed": 0,
    "margin": 0.2,
    "hinge_warmup_epochs": 2,
    "distill_temperature": 1.0,
    "distill_weight": 1.0,
    "infonce_weight": 1.0,
    "amp": True,
}
_V0_RECIPE = {
    "model": _V0_MODEL,
    "alignment": {**_V0_TRAIN, "stage": "alignment", "loss": "infonce", "lr": 5e-4, "patience": 3},
    "matching": {**_V0_TRAIN, "stage": "matching", "loss": "distill+infonce", "lr": 1e-3, "patience": 4},
    "baseline": {
        **_V0_TRAIN,
        "stage": "baseline",
        "loss": "infonce",
        "lr": 2e-3,
        "warmup_steps": 20,
        "patience": 3,
    },
    "train_infonce_student": True,
    "rerank_k": 100,
}


def _filled(data: Any, absent: Mapping[str, Any]) -> Any:
    """`data` with the fields of `absent` it lacks (nested objects too); other values are left for validation."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for key, value in absent.items():
        if key not in out:
            out[key] = copy.deepcopy(value)
        elif isinstance(value, Mapping):
            out[key] = _filled(out[key], value)
    return out


def _model_v0_to_v1(config: dict[str, Any]) -> dict[str, Any]:
    """v0 checkpoints may lack fields added since they were written."""
    return _filled(
        config, {"image_encoder": _V0_IMAGE_ENCODER, "text_encoder": _V0_TEXT_ENCODER, "model": _V0_MODEL}
    )


def _recipe_v0_to_v1(recipe: dict[str, Any]) -> dict[str, Any]:
    """v0 recipes held the device the run executed on (now a run setting, `RunConfig`) and may lack fields.

    Runs always saved a "model" section; a hand-written v0 recipe without one meant `aladin train`'s heads, whose
    student reads the frozen features (a saved section without the field predates that option: contextual).
    """
    absent = (
        _V0_RECIPE
        if "model" in recipe
        else {**_V0_RECIPE, "model": {**_V0_MODEL, "matching_input": "frozen"}}
    )
    return _filled({k: v for k, v in recipe.items() if k != "device"}, absent)


def _encoders_v0_to_v1(meta: dict[str, Any]) -> dict[str, Any]:
    """v0 cache metadata may lack encoder fields added since the cache was written."""
    return _filled(meta, {"image_encoder": _V0_IMAGE_ENCODER, "text_encoder": _V0_TEXT_ENCODER})


# Image-encoder fields added in version 2 (classifier tags, issue #28): off in every earlier file.
_V1_IMAGE_ENCODER = {
    "classifier_tags": False,
    "tag_global_top": 5,
    "tag_global_min_p": 0.02,
    "tag_cell_min_p": 0.3,
    "max_tags": 10,
    "tag_boxes": "image",
}


def _encoders_v1_to_v2(document: dict[str, Any]) -> dict[str, Any]:
    """v1 checkpoints and cache metadata predate classifier tags: they hold untagged features."""
    return _filled(document, {"image_encoder": _V1_IMAGE_ENCODER})


def _recipe_v1_to_v2(recipe: dict[str, Any]) -> dict[str, Any]:
    """Recipes hold no encoder settings: nothing changed for them in version 2."""
    return recipe


#: Per document kind: the function taking version N to N + 1.
MIGRATIONS: dict[str, dict[int, Migration]] = {
    "model": {0: _model_v0_to_v1, 1: _encoders_v1_to_v2},
    "recipe": {0: _recipe_v0_to_v1, 1: _recipe_v1_to_v2},
    "encoders": {0: _encoders_v0_to_v1, 1: _encoders_v1_to_v2},
}


def migrate(kind: str, data: Any, version: Any, where: str) -> Any:
    """`data` (a `kind` document saved at schema `version`) brought to `SCHEMA_VERSION`."""
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= SCHEMA_VERSION:
        raise AladinError(
            f"{where}: {SCHEMA_KEY} {version!r} is not one this aladin reads (0 to {SCHEMA_VERSION}); "
            "was it written by a newer aladin?"
        )
    if not isinstance(data, dict):
        return data  # the config reader names the wrong type
    for step in range(version, SCHEMA_VERSION):
        data = MIGRATIONS[kind][step](data)
    return data


def stored_version(document: Mapping[str, Any]) -> Any:
    """The schema version a saved document records (0 for files written before versions existed)."""
    return document.get(SCHEMA_KEY, 0)
