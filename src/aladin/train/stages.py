"""The training stages: alignment head (teacher), matching head (student), and the linear global baseline.

Each stage's batch loss compares every image of the batch with every caption. Under torch.distributed the
batch is the global one: embeddings (and the frozen teacher's features) are gathered from every rank before
the score matrix is built, so N ranks with batch B train like one process with batch N×B.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from aladin import distributed
from aladin.config import CHOICES, TrainConfig
from aladin.distributed import gather_padded, gather_with_grad
from aladin.errors import AladinError
from aladin.evaluate.scorers import alignment_matrix, matching_matrix, validation_rsum
from aladin.model import AladinModel, LinearGlobalModel
from aladin.model.alignment import matching_scores, region_word_scores
from aladin.model.features import FeatureTensors, embed_split, mean_pooled, mean_regions
from aladin.model.losses import distillation_loss, hardest_negative_hinge_loss, infonce_loss
from aladin.train.loop import BatchLoss, FitResult, fit


def sample_captions(feats: FeatureTensors, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random caption per image of the batch, so no caption of a batch image is ever its negative.

    The draws are those of the global batch (this rank keeps its strided share of them), so N ranks pick the
    captions one process would pick for the same images.
    """
    owners = feats.caption_image
    starts = torch.searchsorted(owners, images)
    counts = torch.searchsorted(owners, images, right=True) - starts
    draws = distributed.local_part(torch.rand(len(images) * distributed.world_size(), generator=generator))
    return starts + (draws * counts).long()


def _positives(image_ids: torch.Tensor, caption_owner: torch.Tensor) -> torch.Tensor:
    """[I, T] mask: True where the caption belongs to the image (works across gathered ranks)."""
    return image_ids.view(-1, 1) == caption_owner.view(1, -1)


def _check_loss(cfg: TrainConfig, stage: str) -> None:
    """A config made for another stage may name a loss this stage lacks."""
    allowed = CHOICES[f"{stage}.loss"]
    if cfg.loss not in allowed:
        raise AladinError(f"{stage}.loss: must be one of {', '.join(allowed)}; got {cfg.loss!r}")


def _global_positives(
    feats: FeatureTensors, images: torch.Tensor, captions: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """The positive mask of the global batch: gathered images against gathered captions."""
    return _positives(
        gather_with_grad(images.to(device)), gather_with_grad(feats.caption_image[captions].to(device))
    )


def _prepare(model: torch.nn.Module) -> None:
    """Join torchrun's process group (if any) and put the model on this rank's device."""
    distributed.init_from_env()
    distributed.to_local_device(model)


def alignment_batch_loss(model: AladinModel, train: FeatureTensors, cfg: TrainConfig) -> BatchLoss:
    """Stage 1's loss of one batch of images: InfoNCE and/or the hardest-negative hinge over alignment scores."""
    _check_loss(cfg, "alignment")
    device = next(model.parameters()).device

    def batch_loss(images: torch.Tensor, generator: torch.Generator, epoch: int) -> torch.Tensor:
        captions = sample_captions(train, images, generator)
        img = model.encode_image(*train.image_batch(images, device, generator), with_global=False)
        txt = model.encode_text(*train.text_batch(captions, device), with_global=False)
        words, word_mask = gather_padded(txt.words, txt.word_mask)
        scores = region_word_scores(
            gather_with_grad(img.regions),
            gather_with_grad(img.region_mask),
            words,
            word_mask,
            model.config.model.word_aggregation,
        )
        positives = _global_positives(train, images, captions, device)
        loss = scores.new_zeros(())
        if cfg.loss in ("infonce", "infonce+hinge"):
            loss = loss + infonce_loss(scores, positives, model.alignment_scale())
        if cfg.loss == "hinge" or (cfg.loss == "infonce+hinge" and epoch >= cfg.hinge_warmup_epochs):
            loss = loss + hardest_negative_hinge_loss(scores, positives, cfg.margin)
        return loss

    return batch_loss


def trained_alignment_parameters(model: AladinModel, cfg: TrainConfig) -> list[torch.nn.Parameter]:
    """What stage 1 trains: the alignment head, its logit scale only when InfoNCE uses it (under DDP every trained
    parameter must take part in the loss)."""
    if cfg.loss != "hinge":
        return model.alignment_parameters()
    scale = {id(p) for p in model.alignment_scale.parameters()}
    return [p for p in model.alignment_parameters() if id(p) not in scale]


def train_alignment(
    model: AladinModel,
    train: FeatureTensors,
    val: FeatureTensors,
    cfg: TrainConfig,
    state_dir: Path | None = None,
) -> FitResult:
    """Stage 1: region×word alignment head with in-batch InfoNCE and/or the hardest-negative hinge."""
    _prepare(model)
    batch_loss = alignment_batch_loss(model, train, cfg)

    def validate() -> float:
        img, txt = embed_split(model, val, with_global=False)
        return validation_rsum(alignment_matrix(model, img, txt), val.caption_image)

    return fit(
        model,
        trained_alignment_parameters(model, cfg),
        batch_loss,
        validate,
        train.num_images,
        cfg,
        "alignment",
        state_dir,
    )


def matching_batch_loss(model: AladinModel, train: FeatureTensors, cfg: TrainConfig) -> BatchLoss:
    """Stage 2's loss of one batch: the student's scores against the frozen teacher's (KL) and/or InfoNCE.

    The teacher's contextualised features of the whole split are computed once, here.
    """
    _check_loss(cfg, "matching")
    device = next(model.parameters()).device
    views = train.view_regions is not None  # then the teacher sees each step's view, computed per batch
    image_hidden_all, text_hidden_all = _frozen_teacher_states(model, train, device, with_images=not views)

    def batch_loss(images: torch.Tensor, generator: torch.Generator, epoch: int) -> torch.Tensor:
        captions = sample_captions(train, images, generator)
        region_mask = train.region_mask[images].to(device)
        attention, scored = train.text_masks(captions, device)
        if views or model.student_reads_frozen:  # a random view, when cached
            regions, boxes, _ = train.image_batch(images, device, generator)
        if views:  # the teacher sees the view the student sees
            with torch.no_grad():
                image_hidden = model.image_hidden(regions, boxes, region_mask)
        else:
            image_hidden = image_hidden_all[images].to(device, torch.float32)
        text_hidden = text_hidden_all[captions, : attention.shape[1]].to(device, torch.float32)
        image_in, text_in = image_hidden, text_hidden
        if model.student_reads_frozen:  # the encoders' own features (after any frozen fine-tuned tail)
            with torch.no_grad():
                image_in = model.image_features(regions)
                text_in = model.text_features(
                    train.tokens[captions, : attention.shape[1]].to(device, torch.float32), attention
                )
        image_vec = gather_with_grad(model.image_matching(image_in, region_mask, region_mask))
        text_vec = gather_with_grad(model.text_matching(text_in, attention, scored))
        student = matching_scores(image_vec, text_vec)
        positives = _global_positives(train, images, captions, device)
        loss = student.new_zeros(())
        if "distill" in cfg.loss:
            with torch.no_grad():
                words, word_mask = gather_padded(model.scored_words(text_hidden, scored), scored)
                teacher = (
                    region_word_scores(
                        gather_with_grad(F.normalize(image_hidden, dim=-1)),
                        gather_with_grad(region_mask),
                        words,
                        word_mask,
                        model.config.model.word_aggregation,
                    )
                    * model.alignment_scale()
                )
            loss = loss + cfg.distill_weight * distillation_loss(
                student * model.matching_scale(), teacher, cfg.distill_temperature
            )
        if "infonce" in cfg.loss:
            loss = loss + cfg.infonce_weight * infonce_loss(student, positives, model.matching_scale())
        return loss

    return batch_loss


def train_matching(
    model: AladinModel,
    train: FeatureTensors,
    val: FeatureTensors,
    cfg: TrainConfig,
    state_dir: Path | None = None,
) -> FitResult:
    """Stage 2: the global matching head, distilled from the frozen alignment head and/or with plain InfoNCE.

    Only the matching head trains (`fit` freezes the rest); the teacher also stays in eval mode.
    """
    _prepare(model)
    batch_loss = matching_batch_loss(model, train, cfg)
    teacher_modules = [
        m for m in (model.image_tail, model.text_tail, model.image_encoder, model.text_encoder) if m
    ]

    def teacher_eval_mode() -> None:
        for module in teacher_modules:
            module.eval()  # the teacher is frozen: no dropout noise in its scores

    def validate() -> float:
        img, txt = embed_split(model, val)
        return validation_rsum(matching_matrix(img, txt), val.caption_image)

    return fit(
        model,
        model.matching_parameters(),
        batch_loss,
        validate,
        train.num_images,
        cfg,
        "matching",
        state_dir,
        on_train_mode=teacher_eval_mode,
    )


@torch.no_grad()
def _frozen_teacher_states(
    model: AladinModel, feats: FeatureTensors, device: torch.device, with_images: bool, batch: int = 256
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The frozen teacher's contextualised features of the whole split, computed once for all of stage 2 (the
    images' only `with_images`)."""
    was_training = model.training
    model.eval()
    images = None
    if with_images:
        images = torch.cat(
            [
                model.image_hidden(
                    *feats.image_batch(torch.arange(s, min(s + batch, feats.num_images)), device)
                )
                .half()
                .cpu()
                for s in range(0, feats.num_images, batch)
            ]
        )
    width = feats.tokens.shape[1]
    texts = []
    for s in range(0, feats.num_captions, batch):
        tokens, attention, _ = feats.text_batch(torch.arange(s, min(s + batch, feats.num_captions)), device)
        hidden = model.text_hidden(tokens, attention)
        texts.append(F.pad(hidden, (0, 0, 0, width - hidden.shape[1])).half().cpu())
    model.train(was_training)
    return images, torch.cat(texts)


def train_linear_baseline(
    train: FeatureTensors, val: FeatureTensors, cfg: TrainConfig, dim: int = 256
) -> tuple[LinearGlobalModel, FitResult]:
    """The linear global baseline: mean-pooled frozen features, one linear map per side, symmetric InfoNCE."""
    distributed.init_from_env()
    torch.manual_seed(cfg.seed)  # the same initial weights whatever this process drew before
    model = LinearGlobalModel(train.regions.shape[-1], train.tokens.shape[-1], dim)
    pooled = {name: mean_pooled(feats) for name, feats in (("train", train), ("val", val))}
    image_train, text_train = pooled["train"]
    cpu = torch.device("cpu")

    def batch_loss(images: torch.Tensor, generator: torch.Generator, epoch: int) -> torch.Tensor:
        captions = sample_captions(train, images, generator)
        if train.view_regions is None:
            pooled = image_train[images]
        else:  # mean of a random view's regions
            pooled = mean_regions(train.image_batch(images, cpu, generator)[0], train.region_mask[images])
        img = gather_with_grad(model.project_image(pooled))
        txt = gather_with_grad(model.project_text(text_train[captions]))
        return infonce_loss(
            matching_scores(img, txt), _global_positives(train, images, captions, cpu), model.logit_scale()
        )

    def validate() -> float:
        with torch.inference_mode():
            model.eval()
            img_val, txt_val = pooled["val"]
            scores = matching_scores(model.project_image(img_val), model.project_text(txt_val))
        return validation_rsum(scores, val.caption_image)

    result = fit(
        model, list(model.parameters()), batch_loss, validate, train.num_images, cfg, "linear baseline"
    )
    return model, result
