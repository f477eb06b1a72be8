"""Encoders from local Hugging Face folders ("hf:PATH"): tiny random CLIP, SigLIP, DINOv2 and ViT models saved
here, checked against the models' own outputs."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_models import MEAN, STD, save_clip, save_dinov2, save_siglip, save_vit
from PIL import Image

from aladin.cli.options import add_encoder_flags, encoder_configs
from aladin.config import (
    ImageEncoderConfig,
    TextEncoderConfig,
    config_from_dict,
    config_to_dict,
    default_multiscale,
)
from aladin.encoders.hf import load_hf_model
from aladin.encoders.image import build_image_encoder, grid_boxes
from aladin.encoders.text import build_text_encoder
from aladin.errors import AladinError

CAPTIONS = ["a red bus", "two dogs playing in the snow near a quiet lake"]
SAVERS = {"clip": save_clip, "siglip": save_siglip, "dinov2": save_dinov2, "vit": save_vit}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {name: save(root / name) for name, save in SAVERS.items()}


def pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)) for _ in range(3)]


def hf(folder: Path) -> str:
    return f"hf:{folder}"


def _reference(
    kind: str, model: torch.nn.Module, pixels: torch.Tensor, interpolate: bool = False
) -> tuple[torch.Tensor, ...]:
    """(patch tokens, pooled token, projected or None) as the transformers model itself computes them;
    `interpolate` for pixels of another size than the model's (DINOv2 always interpolates)."""
    flag = {"interpolate_pos_encoding": True} if interpolate else {}
    with torch.no_grad():
        if kind == "clip":
            out = model.vision_model(pixel_values=pixels, **flag)
            tokens = model.vision_model.post_layernorm(out.last_hidden_state)
            return (
                tokens[:, 1:],
                out.pooler_output,
                model.get_image_features(pixel_values=pixels, **flag).pooler_output,
            )
        if kind == "siglip":
            out = model.vision_model(pixel_values=pixels, **flag)
            return out.last_hidden_state, out.pooler_output, out.pooler_output
        out = model(pixel_values=pixels, interpolate_pos_encoding=True) if kind == "vit" else model(pixels)
        return out.last_hidden_state[:, 1:], out.last_hidden_state[:, 0], None


@pytest.mark.parametrize("kind", list(SAVERS))
def test_regions_are_the_models_patch_tokens_then_its_pooled_token(folders, kind):
    enc = build_image_encoder(ImageEncoderConfig(name=hf(folders[kind])))
    images = pictures()
    batch = enc.encode(images)
    assert enc.feature_dim == 32 and enc.num_regions == 17  # a 4×4 patch grid + the whole image
    assert batch.regions.shape == (3, 17, 32) and batch.region_mask.all()
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]])
    assert torch.equal(batch.boxes[0], torch.cat([grid_boxes(4, 4), whole]))
    patches, pooled, projected = _reference(kind, load_hf_model(folders[kind], "test"), enc.pixels(images))
    torch.testing.assert_close(batch.regions[:, :16], patches, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch.regions[:, 16], pooled, atol=1e-5, rtol=1e-4)
    if projected is None:
        assert batch.projected is None and enc.shared_space is None
    else:
        torch.testing.assert_close(batch.projected, projected, atol=1e-5, rtol=1e-4)
        assert enc.shared_space == ImageEncoderConfig(name=hf(folders[kind])).revision


@pytest.mark.parametrize("kind", list(SAVERS))
def test_multiscale_regions_are_the_patch_tokens_at_both_sizes_then_the_pooled_token(folders, kind):
    enc = build_image_encoder(ImageEncoderConfig(name=hf(folders[kind]), multiscale=True))
    images = pictures()
    batch = enc.encode(images)
    assert enc.num_regions == 16 + 64 + 1  # the 4×4 grid at 32 px, the 8×8 grid at 64 px, the whole image
    assert batch.regions.shape == (3, 81, 32) and batch.region_mask.all()
    assert enc.decode_size == (64, 64)  # pictures decode for the larger scale
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]])
    assert torch.equal(batch.boxes[1], torch.cat([grid_boxes(4, 4), grid_boxes(8, 8), whole]))
    for grid in (batch.boxes[0, :16], batch.boxes[0, 16:80]):  # each scale tiles the whole picture
        torch.testing.assert_close(grid[:, 4].sum(), torch.tensor(1.0))
    model = load_hf_model(folders[kind], "test")
    patches, pooled, projected = _reference(kind, model, enc.pixels(images, 32))
    torch.testing.assert_close(batch.regions[:, :16], patches, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch.regions[:, 80], pooled, atol=1e-5, rtol=1e-4)
    if projected is not None:  # the tower's own embedding is the input size's, as without multiscale
        torch.testing.assert_close(batch.projected, projected, atol=1e-5, rtol=1e-4)
    fine, _, _ = _reference(kind, model, enc.pixels(images, 64), interpolate=True)
    torch.testing.assert_close(batch.regions[:, 16:80], fine, atol=1e-5, rtol=1e-4)


def test_pixels_are_resized_whole_and_normalised_by_the_processor(folders):
    enc = build_image_encoder(ImageEncoderConfig(name=hf(folders["dinov2"])))
    assert enc.input_size == 32  # the processor's crop, not the config's 48 px
    pixels = enc.pixels([Image.new("RGB", (90, 20), (255, 0, 51))])
    assert pixels.shape == (1, 3, 32, 32)
    expected = (torch.tensor([1.0, 0.0, 0.2]) - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(pixels[0, :, 5, 7], expected)


@pytest.mark.parametrize("kind", list(SAVERS))
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("multiscale", [False, True])
def test_finetune_hidden_states_then_tail_reproduce_the_tower(folders, kind, layers, multiscale):
    images = pictures()
    cfg = ImageEncoderConfig(name=hf(folders[kind]), multiscale=multiscale)
    frozen = build_image_encoder(cfg).encode(images)
    split = build_image_encoder(dataclasses.replace(cfg, finetune_layers=layers))
    hidden = split.encode(images)
    assert hidden.boxes.shape == frozen.boxes.shape  # boxes describe the final regions
    assert not torch.allclose(hidden.regions[:, -16:], frozen.regions[:, -17:-1], atol=1e-2)
    tail = split.make_tail()
    assert all(p.requires_grad for p in tail.parameters())
    torch.testing.assert_close(tail(hidden.regions), frozen.regions, atol=1e-5, rtol=1e-4)
    with pytest.raises(AladinError, match="finetune_layers"):
        build_image_encoder(ImageEncoderConfig(name=hf(folders[kind]), finetune_layers=3))


def test_clip_text_tower_masks_specials_and_projects_like_clip(folders):
    enc = build_text_encoder(TextEncoderConfig(name=hf(folders["clip"])))
    batch = enc.encode(CAPTIONS)
    lengths = enc.lengths(CAPTIONS)
    assert batch.tokens.shape == (2, max(lengths), 32)
    for row, n in enumerate(lengths):
        assert batch.token_mask[row, 1 : n - 1].all() and not batch.token_mask[row, [0, n - 1]].any()
        assert (batch.tokens[row, n:] == 0).all()
    assert enc.word_pieces(CAPTIONS[0]) == ["a", "red", "bus"]
    model = load_hf_model(folders["clip"], "test")
    for row, caption in enumerate(CAPTIONS):
        ids = enc.tokenizer([caption], return_tensors="pt")
        with torch.no_grad():
            out = model.text_model(**ids)
            expected = model.get_text_features(**ids).pooler_output
        torch.testing.assert_close(batch.projected[row : row + 1], expected, atol=1e-5, rtol=1e-4)
        n = lengths[row]
        torch.testing.assert_close(batch.tokens[row, :n], out.last_hidden_state[0], atol=1e-5, rtol=1e-4)
    assert enc.shared_space == build_image_encoder(ImageEncoderConfig(name=hf(folders["clip"]))).shared_space


def test_siglip_text_tower_runs_padded_to_full_length_whatever_the_batch(folders):
    enc = build_text_encoder(TextEncoderConfig(name=hf(folders["siglip"])))
    together = enc.encode(CAPTIONS)
    alone = enc.encode(CAPTIONS[:1])
    torch.testing.assert_close(together.projected[:1], alone.projected, atol=1e-5, rtol=1e-4)
    model = load_hf_model(folders["siglip"], "test")
    ids = enc.tokenizer(CAPTIONS[:1], padding="max_length", max_length=24, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.get_text_features(input_ids=ids).pooler_output
    torch.testing.assert_close(alone.projected, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(AladinError, match="SigLIP"):
        build_text_encoder(TextEncoderConfig(name=hf(folders["siglip"]), finetune_layers=1))


@pytest.mark.parametrize("layers", [1, 2])
def test_clip_text_finetune_tail_reproduces_the_tower(folders, layers):
    frozen = build_text_encoder(TextEncoderConfig(name=hf(folders["clip"]))).encode(CAPTIONS)
    split = build_text_encoder(TextEncoderConfig(name=hf(folders["clip"]), finetune_layers=layers))
    hidden = split.encode(CAPTIONS)
    assert not torch.allclose(hidden.tokens, frozen.tokens, atol=1e-2)
    out = split.make_tail()(hidden.tokens, hidden.attention_mask) * hidden.attention_mask[..., None]
    torch.testing.assert_close(out, frozen.tokens, atol=1e-5, rtol=1e-4)
    alone = split.encode(CAPTIONS[1:])  # no padding at all: the tail must still be causal
    out = split.make_tail()(alone.tokens, alone.attention_mask)
    torch.testing.assert_close(out, frozen.tokens[1:], atol=1e-5, rtol=1e-4)


def test_configs_record_the_folder_and_refuse_other_weights(folders, tmp_path):
    cfg = ImageEncoderConfig(name=hf(folders["vit"]))
    assert cfg.revision.startswith("vit@config-") and not cfg.multiscale
    stored = config_from_dict(ImageEncoderConfig, config_to_dict(cfg))
    assert stored == cfg  # a saved revision is kept as saved, not recomputed
    assert TextEncoderConfig(name=hf(folders["clip"])).revision.startswith("clip@")
    assert ImageEncoderConfig().revision == "" and TextEncoderConfig().revision == ""
    with pytest.raises(AladinError, match="only hf: encoders"):
        ImageEncoderConfig(revision="x")
    copy = save_vit(tmp_path / "vit", seed=0)
    assert ImageEncoderConfig(name=hf(copy)).revision == cfg.revision  # same name, config and weights
    save_vit(copy, seed=1)  # the same folder now holds other weights
    assert ImageEncoderConfig(name=hf(copy)).revision != cfg.revision
    with pytest.raises(AladinError, match="now holds"):
        build_image_encoder(dataclasses.replace(cfg, name=hf(copy)))


@pytest.mark.parametrize(
    ("flags", "name", "multiscale"),
    [
        ([], "efficientnet-lite0", True),  # the bundled encoder's measured default
        (["--no-multiscale"], "efficientnet-lite0", False),
        (["--image-encoder", "HF"], "HF", False),  # an hf: tower alone stays single-scale
        (["--image-encoder", "HF", "--multiscale"], "HF", True),
    ],
)
def test_multiscale_flag_defaults_to_the_encoders_default(folders, flags, name, multiscale):
    parser = argparse.ArgumentParser()
    add_encoder_flags(parser)
    vit = hf(folders["vit"])
    image, _ = encoder_configs(parser.parse_args([vit if f == "HF" else f for f in flags]))
    assert image.name == (vit if name == "HF" else name) and image.multiscale is multiscale
    assert default_multiscale(image.name) is (name != "HF")


def test_saved_multiscale_reads_as_saved_and_must_be_a_bool(folders):
    cfg = ImageEncoderConfig(name=hf(folders["vit"]), multiscale=True)
    assert config_from_dict(ImageEncoderConfig, config_to_dict(cfg), partial=False) == cfg
    with pytest.raises(AladinError, match="image_encoder.multiscale: expected true or false"):
        config_from_dict(ImageEncoderConfig, {"name": hf(folders["vit"]), "multiscale": "yes"})


def test_missing_folder_says_how_to_get_one(tmp_path):
    with pytest.raises(AladinError, match="huggingface-cli download") as err:
        ImageEncoderConfig(name=hf(tmp_path / "nowhere"))
    assert "\n" not in str(err.value)
    with pytest.raises(AladinError, match="text_encoder.name"):
        TextEncoderConfig(name=hf(tmp_path / "nowhere"))
