import torch
from feature_fixtures import tiny_config

from aladin.config import AladinConfig, ModelConfig, TextEncoderConfig
from aladin.model import AladinModel
from aladin.model.losses import infonce_loss


def _text_batch(batch=3, length=6, dim=24):
    tokens = torch.randn(batch, length, dim)
    attention = torch.ones(batch, length, dtype=torch.bool)
    attention[0, 4:] = False
    scored = attention.clone()
    scored[:, 0] = False
    scored[1, 5] = False
    return tokens, attention, scored


def test_shapes_normalisation_and_padding_invariance():
    torch.manual_seed(0)
    model = AladinModel(tiny_config()).eval()
    regions, boxes = torch.randn(2, 5, 32), torch.rand(2, 5, 5)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    image = model.encode_image(regions, boxes, mask)
    assert image.regions.shape == (2, 5, 32) and image.global_vector.shape == (2, 32)
    assert torch.allclose(image.global_vector.norm(dim=-1), torch.ones(2), atol=1e-5)
    # padded regions must not change anything: the second image alone, without its padding, gives the same vector
    alone = model.encode_image(regions[1:, :3], boxes[1:, :3], mask[1:, :3])
    assert torch.allclose(alone.global_vector, image.global_vector[1:], atol=1e-5)
    tokens, attention, scored = _text_batch()
    text = model.encode_text(tokens, attention, scored)
    trimmed = model.encode_text(tokens[:1, :4], attention[:1, :4], scored[:1, :4])
    assert torch.allclose(trimmed.global_vector, text.global_vector[:1], atol=1e-5)
    scores = model.alignment_scores(image, text)
    assert scores.shape == (2, 3) and scores.abs().max() <= 1 + 1e-5


def test_finetuned_text_tail_is_part_of_the_teacher():
    config = AladinConfig(
        text_encoder=TextEncoderConfig(finetune_layers=1),
        model=ModelConfig(
            image_feature_dim=32, text_feature_dim=384, embed_dim=32, global_dim=32, ff_dim=64, num_heads=2
        ),
    )
    model = AladinModel(config)
    assert model.text_tail is not None
    tail_params = set(map(id, model.text_tail.parameters()))
    assert tail_params <= set(map(id, model.alignment_parameters()))
    tokens, attention, scored = _text_batch(dim=384)
    image = model.encode_image(torch.randn(3, 5, 32), torch.rand(3, 5, 5), torch.ones(3, 5, dtype=torch.bool))
    text = model.encode_text(tokens, attention, scored)
    loss = infonce_loss(model.alignment_scores(image, text), torch.eye(3, dtype=torch.bool), 10.0)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text_tail.parameters())
