"""Two gloo ranks with half a batch each must train exactly like one process with the whole batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from feature_fixtures import make_features, tiny_config
from spawn_ranks import run_ranks

from aladin import distributed
from aladin.config import TrainConfig
from aladin.evaluate.scorers import alignment_matrix
from aladin.model import AladinModel
from aladin.model.features import embed_split
from aladin.train.loop import STATE_FILE, distributed_loss, train_only
from aladin.train.stages import (
    alignment_batch_loss,
    matching_batch_loss,
    train_alignment,
    trained_alignment_parameters,
)

CASES = [
    ("alignment", "infonce"),
    ("alignment", "hinge"),
    ("alignment", "infonce+hinge"),
    ("matching", "distill"),
    ("matching", "infonce"),
    ("matching", "distill+infonce"),
]
GLOBAL_BATCH = 12


def _model() -> AladinModel:
    """The same weights in every process; no dropout, so one process and two ranks compute the same thing."""
    torch.manual_seed(0)
    config = tiny_config()
    return AladinModel(dataclasses.replace(config, model=dataclasses.replace(config.model, dropout=0.0)))


def loss_and_grads(stage: str, loss: str) -> tuple[float, dict[str, torch.Tensor]]:
    """One step of the stage's real batch loss on this rank's share of a fixed global batch (DDP under ranks)."""
    model = _model()
    feats = make_features(20, seed=1, captions_per_image=3)
    cfg = TrainConfig(stage=stage, loss=loss, hinge_warmup_epochs=0)
    if stage == "alignment":
        batch_loss, params = alignment_batch_loss(model, feats, cfg), trained_alignment_parameters(model, cfg)
    else:
        batch_loss, params = matching_batch_loss(model, feats, cfg), model.matching_parameters()
    images = torch.randperm(feats.num_images, generator=torch.Generator().manual_seed(3))[:GLOBAL_BATCH]
    with train_only(model, params):  # as `fit` does
        step = distributed_loss(model, batch_loss)  # DDP must outlive the backward pass
        value = step(distributed.local_part(images), torch.Generator().manual_seed(4), 0)
        value.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return float(value.detach()), grads


def _losses_worker(out: Path) -> None:
    results = {f"{stage}:{loss}": loss_and_grads(stage, loss) for stage, loss in CASES}
    torch.save(results, out / f"rank{distributed.rank()}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    run_ranks(_losses_worker, out)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize(("stage", "loss"), CASES)
def test_two_ranks_give_the_loss_and_gradients_of_one_process(two_ranks, stage: str, loss: str) -> None:
    want_loss, want_grads = loss_and_grads(stage, loss)
    assert want_grads and all(g.abs().sum() > 0 for g in want_grads.values())
    for got_loss, got_grads in (ranks[f"{stage}:{loss}"] for ranks in two_ranks):
        assert got_loss == pytest.approx(want_loss, rel=1e-5)
        assert got_grads.keys() == want_grads.keys()
        for name, want in want_grads.items():
            scale = float(want.abs().max())  # float32 noise is relative to the tensor's largest entry
            torch.testing.assert_close(got_grads[name], want, rtol=1e-4, atol=1e-5 * scale, msg=name)


def _val_scores(model: AladinModel) -> torch.Tensor:
    image, text = embed_split(model, make_features(16, seed=6), with_global=False)
    return alignment_matrix(model, image, text)


FIT = TrainConfig(epochs=2, batch_size=8, lr=1e-3, warmup_steps=2, patience=0)


def _fit_worker(out: Path) -> None:
    model = _model()
    result = train_alignment(model, make_features(48, seed=5), make_features(16, seed=6), FIT, out / "state")
    if distributed.is_main_process():
        torch.save({"weights": model.state_dict(), "history": result.history}, out / "two-ranks.pt")


def test_training_on_two_ranks_matches_one_process_and_resumes_on_one(tmp_path: Path) -> None:
    run_ranks(_fit_worker, tmp_path)
    got = torch.load(tmp_path / "two-ranks.pt")
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [STATE_FILE]  # rank 0's, no temp files

    model = _model()  # one process, the same global batch of 2 × 8
    result = train_alignment(
        model, make_features(48, seed=5), make_features(16, seed=6), dataclasses.replace(FIT, batch_size=16)
    )
    assert [h["loss"] for h in got["history"]] == pytest.approx([h["loss"] for h in result.history], rel=1e-4)
    two_ranks = _model()
    two_ranks.load_state_dict(got["weights"])
    # Scores, not raw weights: the attention key biases have a zero gradient, which Adam turns into noise.
    torch.testing.assert_close(_val_scores(two_ranks), _val_scores(model), rtol=1e-4, atol=1e-5)

    resumed = _model()  # the two ranks' training state, picked up by one process: nothing left to train
    again = train_alignment(
        resumed, make_features(48, seed=5), make_features(16, seed=6), FIT, tmp_path / "state"
    )
    assert again.history == got["history"]
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, got["weights"][name]), name
