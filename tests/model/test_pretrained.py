"""The bundled default model: it loads offline, has the shapes its config declares, and carries its card."""

from __future__ import annotations

import torch

from aladin.model.pretrained import default_model_dir, load_default_model


def test_bundled_model_loads_offline_with_its_declared_shapes() -> None:
    model = load_default_model()
    cfg = model.config
    assert (cfg.image_encoder.name, cfg.text_encoder.name) == ("efficientnet-lite0", "all-MiniLM-L6-v2")
    with torch.inference_mode():
        regions = torch.randn(2, 49, cfg.model.image_feature_dim)
        image = model.encode_image(regions, torch.rand(2, 49, 5), torch.ones(2, 49, dtype=torch.bool))
        tokens = torch.randn(3, 7, cfg.model.text_feature_dim)
        mask = torch.ones(3, 7, dtype=torch.bool)
        text = model.encode_text(tokens, mask, mask)
    assert image.global_vector.shape == (2, cfg.model.global_dim)
    assert text.global_vector.shape == (3, cfg.model.global_dim)
    assert torch.allclose(image.global_vector.norm(dim=-1), torch.ones(2), atol=1e-3)
    assert model.validated_rerank() is not None  # the re-rank setting chosen on validation travels with it
    card = (default_model_dir() / "MODEL_CARD.md").read_text()
    assert "Recall on the test split" in card and "linear global baseline" in card and "Licences" in card
