import copy
import dataclasses

import pytest
import torch
from feature_fixtures import make_features, tiny_config

from aladin.config import TrainConfig
from aladin.errors import CheckpointError
from aladin.evaluate.metrics import retrieval_metrics
from aladin.evaluate.scorers import alignment_matrix, matching_matrix
from aladin.model import AladinModel
from aladin.model.features import embed_split
from aladin.train.stages import sample_captions, train_alignment, train_linear_baseline, train_matching

FAST = dict(epochs=6, batch_size=32, lr=2e-3, warmup_steps=5, patience=0)


@pytest.fixture(scope="module")
def trained(tiny_splits):
    train, val = tiny_splits
    torch.manual_seed(0)
    model = AladinModel(tiny_config())
    fit = train_alignment(model, train, val, TrainConfig(**FAST))
    return model, fit


def test_alignment_head_learns(trained, tiny_splits):
    model, fit = trained
    _, val = tiny_splits
    image, text = embed_split(model, val, with_global=False)
    metrics = retrieval_metrics(alignment_matrix(model, image, text).numpy(), val.caption_image.numpy())
    # chance R@5 with 100 images is 5 %; the head must do far better
    assert metrics["t2i_r5"] > 40 and metrics["i2t_r5"] > 40
    assert fit.best_val_rsum == pytest.approx(metrics["rsum"], abs=1e-3)


@pytest.mark.parametrize("loss", ["distill", "infonce", "distill+infonce"])
def test_matching_head_learns_and_teacher_stays_frozen(trained, tiny_splits, loss):
    teacher, _ = trained
    train, val = tiny_splits
    model = copy.deepcopy(teacher)
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    train_matching(model, train, val, TrainConfig(stage="matching", loss=loss, **FAST))
    for k, v in model.image_encoder.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher weight {k} changed in stage 2"
    image, text = embed_split(model, val)
    metrics = retrieval_metrics(matching_matrix(image, text).numpy(), val.caption_image.numpy())
    assert metrics["t2i_r5"] > 25 and metrics["i2t_r5"] > 25


def test_detectors_student_learns_from_the_teacher(trained, tiny_splits):
    teacher, _ = trained
    train, val = tiny_splits
    model_cfg = dataclasses.replace(teacher.config.model, matching_form="detectors")
    model = AladinModel(dataclasses.replace(teacher.config, model=model_cfg))
    teacher_part = {k: v for k, v in teacher.state_dict().items() if "matching" not in k}
    model.load_state_dict(teacher_part, strict=False)  # the student alone starts afresh
    train_matching(model, train, val, TrainConfig(stage="matching", loss="distill+infonce", **FAST))
    image, text = embed_split(model, val)
    metrics = retrieval_metrics(matching_matrix(image, text).numpy(), val.caption_image.numpy())
    assert metrics["t2i_r5"] > 25 and metrics["i2t_r5"] > 25  # chance is 5 %


def test_hinge_loss_trains(tiny_splits):
    train, val = tiny_splits
    torch.manual_seed(0)
    model = AladinModel(tiny_config())
    fit = train_alignment(model, train, val, TrainConfig(loss="infonce+hinge", hinge_warmup_epochs=1, **FAST))
    assert fit.best_val_rsum > 100  # chance rsum with 100 images is about 48


def test_linear_baseline_learns_and_is_seeded(tiny_splits):
    train, val = tiny_splits
    model, fit = train_linear_baseline(train, val, TrainConfig(**FAST))
    assert fit.best_val_rsum > 100
    torch.rand(1000)  # whatever ran before in the process, the same seed gives the same model
    again, _ = train_linear_baseline(train, val, TrainConfig(**FAST))
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, again.state_dict()[name]), name


def test_every_stage_learns_from_augmented_views(tiny_splits):
    train, val = tiny_splits
    g = torch.Generator().manual_seed(0)
    noisy = [train.regions.float() + 0.3 * torch.randn(train.regions.shape, generator=g) for _ in range(2)]
    train = dataclasses.replace(train, view_regions=torch.stack(noisy, dim=1).half())
    torch.manual_seed(0)
    model = AladinModel(tiny_config())
    assert train_alignment(model, train, val, TrainConfig(**FAST)).best_val_rsum > 100  # chance is about 48
    for loss in ("distill", "infonce"):
        student = copy.deepcopy(model)
        fit = train_matching(student, train, val, TrainConfig(stage="matching", loss=loss, **FAST))
        assert fit.best_val_rsum > 100
    assert train_linear_baseline(train, val, TrainConfig(**FAST))[1].best_val_rsum > 100


def test_sampled_captions_belong_to_their_images():
    feats = make_features(10, seed=3, captions_per_image=3)
    g = torch.Generator().manual_seed(0)
    images = torch.tensor([0, 4, 9])
    for _ in range(20):
        caps = sample_captions(feats, images, g)
        assert torch.equal(feats.caption_image[caps], images)


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    train, val = make_features(96, seed=5), make_features(30, seed=6)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-3, warmup_steps=2, patience=0)
    torch.manual_seed(0)
    reference = AladinModel(tiny_config())
    start = copy.deepcopy(reference.state_dict())
    train_alignment(reference, train, val, cfg)

    class Interrupt(Exception):
        pass

    torch.manual_seed(0)
    model = AladinModel(tiny_config())
    model.load_state_dict(start)
    calls = {"n": 0}
    import aladin.train.stages as stages

    original = stages.validation_rsum

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupt  # the process dies during the 2nd epoch's validation
        return original(*args, **kwargs)

    stages.validation_rsum = flaky
    try:
        with pytest.raises(Interrupt):
            train_alignment(model, train, val, cfg, state_dir=tmp_path)
    finally:
        stages.validation_rsum = original
    resumed = AladinModel(tiny_config())
    result = train_alignment(resumed, train, val, cfg, state_dir=tmp_path)
    assert result.epochs_run == 3
    for k, v in reference.state_dict().items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-5), k
    with pytest.raises(CheckpointError, match="different training config"):
        train_alignment(AladinModel(tiny_config()), train, val, TrainConfig(epochs=5), state_dir=tmp_path)


@pytest.mark.parametrize(("warmup", "total"), [(1, 5), (3, 10), (20, 200)])
def test_the_schedule_is_transformers_cosine_but_for_its_warm_up(warmup, total):
    """Why train/loop.py keeps its own warm-up + cosine: transformers' starts the warm-up at 0 (one step later
    than ours) and rises again past the last step; between the two they agree."""
    from transformers import get_cosine_schedule_with_warmup

    from aladin.train.loop import warmup_cosine

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = get_cosine_schedule_with_warmup(optimizer, warmup, total).lr_lambdas[0]
    assert theirs(0) == 0 < warmup_cosine(0, warmup, total) == 1 / warmup
    for step in range(warmup):
        assert warmup_cosine(step, warmup, total) == pytest.approx(theirs(step + 1))
    for step in range(warmup, total + 1):
        assert warmup_cosine(step, warmup, total) == pytest.approx(theirs(step), abs=1e-12)
    assert warmup_cosine(total + warmup, warmup, total) == 0 < theirs(total + warmup)
