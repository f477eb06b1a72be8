"""The training stages: alignment head (teacher), matching head (student), and the linear global baseline."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from aladin.config import TrainConfig
from aladin.distributed import gather_with_grad
from aladin.errors import AladinError
from aladin.evaluate.scorers import alignment_matrix, matching_matrix, validation_rsum
from aladin.model import AladinModel, LinearGlobalModel
from aladin.model.alignment import region_word_scores
from aladin.model.features import FeatureTensors, embed_split, mean_pooled
from aladin.model.losses import distillation_loss, hardest_negative_hinge_loss, infonce_loss
from aladin.train.loop import FitResult, fit

ALIGNMENT_LOSSES = ("infonce", "hinge", "infonce+hinge")
MATCHING_LOSSES = ("distill", "infonce", "distill+infonce")


def sample_captions(feats: FeatureTensors, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random caption per image of the batch, so no caption of a batch image is ever its negative."""
    owners = feats.caption_image
    starts = torch.searchsorted(owners, images)
    counts = torch.searchsorted(owners, images, right=True) - starts
    offsets = (torch.rand(len(images), generator=generator) * counts).long()
    return starts + offsets


def _positives(image_ids: torch.Tensor, caption_owner: torch.Tensor) -> torch.Tensor:
    """[I, T] mask: True where the caption belongs to the image (works across gathered ranks)."""
    return image_ids.view(-1, 1) == caption_owner.view(1, -1)


def _check_loss(name: str, allowed: tuple[str, ...], stage: str) -> None:
    if name not in allowed:
        raise AladinError(f"{stage}.loss: must be one of {', '.join(allowed)}; got {name!r}")


def train_alignment(
    model: AladinModel,
    train: FeatureTensors,
    val: FeatureTensors,
    cfg: TrainConfig,
    state_dir: Path | None = None,
) -> FitResult:
    """Stage 1: region×word alignment head with in-batch InfoNCE and/or the hardest-negative hinge."""
    _check_loss(cfg.loss, ALIGNMENT_LOSSES, "alignment")
    device = next(model.parameters()).device

    def batch_loss(images: torch.Tensor, generator: torch.Generator, epoch: int) -> torch.Tensor:
        captions = sample_captions(train, images, generator)
        img = model.encode_image(*train.image_batch(images, device), with_global=False)
        txt = model.encode_text(*train.text_batch(captions, device), with_global=False)
        regions, region_mask = gather_with_grad(img.regions), gather_with_grad(img.region_mask)
        words, word_mask = _gather_padded(txt.words, txt.word_mask)
        scores = region_word_scores(
            regions, region_mask, words, word_mask, model.config.model.word_aggregation
        )
        owners = gather_with_grad(images.to(device))
        positives = _positives(owners, gather_with_grad(train.caption_image[captions].to(device)))
        loss = scores.new_zeros(())
        if cfg.loss in ("infonce", "infonce+hinge"):
            loss = loss + infonce_loss(scores, positives, model.alignment_scale())
        if cfg.loss == "hinge" or (cfg.loss == "infonce+hinge" and epoch >= cfg.hinge_warmup_epochs):
            loss = loss + hardest_negative_hinge_loss(scores, positives, cfg.margin)
        return loss

    def validate() -> float:
        img, txt = embed_split(model, val, with_global=False)
        return validation_rsum(alignment_matrix(model, img, txt), val.caption_image)

    return fit(
        model,
        model.alignment_parameters(),
        batch_loss,
        validate,
        train.num_images,
        cfg,
        "alignment",
        state_dir,
    )


def train_matching(
    model: AladinModel,
    train: FeatureTensors,
    val: FeatureTensors,
    cfg: TrainConfig,
    state_dir: Path | None = None,
) -> FitResult:
    """Stage 2: the global matching head, distilled from the frozen alignment head and/or with plain InfoNCE."""
    _check_loss(cfg.loss, MATCHING_LOSSES, "matching")
    device = next(model.parameters()).device
    for p in model.alignment_parameters():
        p.requires_grad_(False)
    teacher_modules = [
        m for m in (model.image_tail, model.text_tail, model.image_encoder, model.text_encoder) if m
    ]

    def teacher_eval_mode() -> None:
        for module in teacher_modules:
            module.eval()  # the teacher is frozen: no dropout noise in its scores

    image_hidden_all, text_hidden_all = _frozen_teacher_states(model, train, device)

    def batch_loss(images: torch.Tensor, generator: torch.Generator, epoch: int) -> torch.Tensor:
        captions = sample_captions(train, images, generator)
        region_mask = train.region_mask[images].to(device)
        attention, scored = train.text_masks(captions, device)
        image_hidden = image_hidden_all[images].to(device, torch.float32)
        text_hidden = text_hidden_all[captions, : attention.shape[1]].to(device, torch.float32)
        image_vec = gather_with_grad(model.image_matching(image_hidden, region_mask, region_mask))
        text_vec = gather_with_grad(model.text_matching(text_hidden, attention, scored))
        student = image_vec @ text_vec.T
        positives = _positives(
            gather_with_grad(images.to(device)), gather_with_grad(train.caption_image[captions].to(device))
        )
        loss = student.new_zeros(())
        if "distill" in cfg.loss:
            with torch.no_grad():
                words, word_mask = _gather_padded(F.normalize(text_hidden, dim=-1), scored)
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

    def validate() -> float:
        img, txt = embed_split(model, val)
        return validation_rsum(matching_matrix(img, txt), val.caption_image)

    try:
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
    finally:
        for p in model.alignment_parameters():
            p.requires_grad_(True)


@torch.no_grad()
def _frozen_teacher_states(
    model: AladinModel, feats: FeatureTensors, device: torch.device, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen teacher's contextualised features of the whole split, computed once for all of stage 2."""
    was_training = model.training
    model.eval()
    images = torch.cat(
        [
            model.image_hidden(*feats.image_batch(torch.arange(s, min(s + batch, feats.num_images)), device))
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
    model = LinearGlobalModel(train.regions.shape[-1], train.tokens.shape[-1], dim)
    pooled = {name: mean_pooled(feats) for name, feats in (("train", train), ("val", val))}
    image_train, text_train = pooled["train"]

    def batch_loss(images: torch.Tensor, generator: torch.Generator, epoch: int) -> torch.Tensor:
        captions = sample_captions(train, images, generator)
        img = model.project_image(image_train[images])
        txt = model.project_text(text_train[captions])
        positives = _positives(images, train.caption_image[captions])
        return infonce_loss(img @ txt.T, positives, model.logit_scale())

    def validate() -> float:
        with torch.inference_mode():
            model.eval()
            img_val, txt_val = pooled["val"]
            scores = model.project_image(img_val) @ model.project_text(txt_val).T
        return validation_rsum(scores, val.caption_image)

    result = fit(
        model, list(model.parameters()), batch_loss, validate, train.num_images, cfg, "linear baseline"
    )
    return model, result


def _gather_padded(words: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather word sequences whose length differs per rank, padding them to a common width first."""
    from aladin import distributed

    if distributed.world_size() > 1:
        width = torch.tensor([words.shape[1]], device=words.device)
        torch.distributed.all_reduce(width, op=torch.distributed.ReduceOp.MAX)
        pad = int(width) - words.shape[1]
        words, mask = F.pad(words, (0, 0, 0, pad)), F.pad(mask, (0, pad))
    return gather_with_grad(words), gather_with_grad(mask)
