import pytest
import torch
import torch.nn.functional as F
from feature_fixtures import tiny_config

from aladin.config import AladinConfig, ModelConfig, TextEncoderConfig
from aladin.evaluate.scorers import alignment_matrix
from aladin.model import AladinModel
from aladin.model.alignment import region_word_scores
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
    scores = alignment_matrix(model, image, text)
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
    scores = region_word_scores(
        image.regions, image.region_mask, text.words, text.word_mask
    )  # with gradients
    loss = infonce_loss(scores, torch.eye(3, dtype=torch.bool), 10.0)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text_tail.parameters())


def _variant(**model_fields):
    base = tiny_config()
    return AladinModel(AladinConfig(model=ModelConfig(**{**base.model.__dict__, **model_fields}))).eval()


def test_learned_word_weights_give_a_weighted_mean_over_words():
    torch.manual_seed(0)
    model = _variant(word_weights=True)
    torch.nn.init.normal_(model.word_weight.weight, std=1.0)  # far from uniform
    regions, boxes, mask = torch.randn(2, 5, 32), torch.rand(2, 5, 5), torch.ones(2, 5, dtype=torch.bool)
    tokens, attention, scored = _text_batch()
    image = model.encode_image(regions, boxes, mask, with_global=False)
    text = model.encode_text(tokens, attention, scored, with_global=False)
    scores = alignment_matrix(model, image, text)
    hidden = model.text_hidden(tokens, attention)
    for t in range(3):
        words = torch.nn.functional.normalize(hidden[t][scored[t]], dim=-1)
        weights = model.word_weight(hidden[t][scored[t]]).squeeze(-1).softmax(dim=0)
        for i in range(2):
            best = (image.regions[i] @ words.T).max(dim=0).values  # each word's best region
            torch.testing.assert_close(scores[i, t], (weights * best).sum(), atol=1e-5, rtol=1e-5)
    assert set(map(id, model.word_weight.parameters())) <= set(map(id, model.alignment_parameters()))


@pytest.mark.parametrize("form", ["pooled", "detectors"])
def test_frozen_input_student_reads_the_encoder_features_not_the_teacher(form):
    torch.manual_seed(0)
    model = _variant(matching_input="frozen", matching_form=form)
    regions, boxes, mask = torch.randn(2, 5, 32), torch.rand(2, 5, 5), torch.ones(2, 5, dtype=torch.bool)
    tokens, attention, scored = _text_batch()
    before = model.encode_image(regions, boxes, mask), model.encode_text(tokens, attention, scored)
    with torch.no_grad():  # change the teacher: the student's vectors must not move, the teacher's must
        for p in (*model.image_encoder.parameters(), *model.text_encoder.parameters()):
            p.add_(torch.randn_like(p))
    after = model.encode_image(regions, boxes, mask), model.encode_text(tokens, attention, scored)
    for old, new in zip(before, after, strict=True):
        torch.testing.assert_close(old.global_vector, new.global_vector)
    assert not torch.allclose(before[0].regions, after[0].regions)
    assert before[0].global_vector.shape == (2, 32) and before[1].global_vector.shape == (3, 32)


def test_detectors_student_keeps_each_detectors_best_region_and_the_mean_demand_of_the_words():
    torch.manual_seed(0)
    model = _variant(matching_form="detectors")
    regions, boxes = torch.randn(2, 5, 32), torch.rand(2, 5, 5)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    tokens, attention, scored = _text_batch()
    image, text = model.encode_image(regions, boxes, mask), model.encode_text(tokens, attention, scored)
    image_hidden, text_hidden = model.image_hidden(regions, boxes, mask), model.text_hidden(tokens, attention)
    for i in range(2):  # padded regions take no part in the max
        best = model.image_matching.detect(image_hidden[i][mask[i]]).max(dim=0).values
        torch.testing.assert_close(image.global_vector[i], F.normalize(best, dim=0))
    for t in range(3):  # nor [CLS] and padding in the mean
        demand = F.relu(model.text_matching.detect(text_hidden[t][scored[t]])).mean(dim=0)
        torch.testing.assert_close(text.global_vector[t], F.normalize(demand, dim=0))
    assert (text.global_vector >= 0).all() and image.global_vector.shape == (2, 32)


def test_detectors_student_gives_a_zero_vector_when_nothing_is_pooled():
    from aladin.model.aladin import DetectorHead

    torch.manual_seed(0)
    features, nothing = torch.randn(2, 3, 8), torch.zeros(2, 3, dtype=torch.bool)
    image_head = DetectorHead(8, 16, 4, "max")
    assert torch.equal(image_head(features, nothing, nothing), torch.zeros(2, 4))
    caption_head = DetectorHead(8, 16, 4, "demand").half()
    with torch.no_grad():
        caption_head.detect[-1].bias.fill_(-100.0)  # no word asks for any detector
    everything = torch.ones(2, 3, dtype=torch.bool)
    assert torch.equal(caption_head(features.half(), everything, everything), torch.zeros(2, 4).half())
