"""The bundled default model: it loads offline, has the shapes its config declares, and carries its card."""

from __future__ import annotations

import torch
from PIL import Image

from aladin.encoders.image import build_image_encoder
from aladin.encoders.text import build_text_encoder
from aladin.model.pretrained import default_model_dir, load_default_model


def test_bundled_model_loads_offline_with_its_declared_shapes() -> None:
    model = load_default_model()
    cfg = model.config
    assert (cfg.image_encoder.name, cfg.text_encoder.name) == ("efficientnet-lite0", "all-MiniLM-L6-v2")
    # through the encoders its config names, as `aladin index build` runs them
    image_encoder = build_image_encoder(cfg.image_encoder)
    assert image_encoder.feature_dim == cfg.model.image_feature_dim
    pictures = [Image.new("RGB", (64, 48), colour) for colour in ("red", "navy")]
    regions = image_encoder.encode(pictures)
    assert (
        regions.regions.shape[1] == image_encoder.num_regions == (245 if cfg.image_encoder.multiscale else 49)
    )
    words = build_text_encoder(cfg.text_encoder).encode(["a red bus", "two dogs in the snow", "a cat"])
    with torch.inference_mode():
        image = model.encode_image(regions.regions, regions.boxes, regions.region_mask)
        text = model.encode_text(words.tokens, words.attention_mask, words.token_mask)
    assert image.global_vector.shape == (2, cfg.model.global_dim)
    assert text.global_vector.shape == (3, cfg.model.global_dim)
    assert torch.allclose(image.global_vector.norm(dim=-1), torch.ones(2), atol=1e-3)
    assert model.rerank.validated  # the re-rank setting chosen on validation travels with it
    card = (default_model_dir() / "MODEL_CARD.md").read_text()
    assert "Recall on the test split" in card and "linear global baseline" in card and "Licences" in card
