"""Losses over in-batch score matrices [I, T] with a boolean positive mask of the same shape.

Captions of the same image are positives for it and never its negatives. Embeddings are gathered across
ranks by the caller (see aladin.distributed) before the score matrix is built, so these functions are the
same for one process and for N.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _multi_positive_ce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each positive against all negatives of its row (other positives left out)."""
    neg_inf = torch.finfo(logits.dtype).min
    negatives_only = logits.masked_fill(positives, neg_inf)
    # For positive (i, j): logsumexp over {j} ∪ negatives(i).
    neg_lse = torch.logsumexp(negatives_only, dim=1, keepdim=True)
    denom = torch.logaddexp(logits, neg_lse.expand_as(logits))
    per_pair = denom - logits
    return per_pair[positives].mean()


def infonce_loss(
    scores: torch.Tensor, positives: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric InfoNCE: image→text over rows and text→image over columns, averaged."""
    logits = scores * logit_scale
    return 0.5 * (_multi_positive_ce(logits, positives) + _multi_positive_ce(logits.T, positives.T))


def hardest_negative_hinge_loss(
    scores: torch.Tensor, positives: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    """VSE++ triplet loss on the hardest in-batch negative, both directions, averaged over positive pairs."""
    neg_inf = torch.finfo(scores.dtype).min
    negatives = scores.masked_fill(positives, neg_inf)
    hardest_text = negatives.amax(dim=1, keepdim=True)  # per image: best-scoring wrong caption
    hardest_image = negatives.amax(dim=0, keepdim=True)  # per caption: best-scoring wrong image
    cost_text = (margin + hardest_text - scores).clamp(min=0)
    cost_image = (margin + hardest_image - scores).clamp(min=0)
    return (cost_text + cost_image)[positives].mean()


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KL(teacher ‖ student) of the in-batch score distributions, image→text and text→image, teacher detached."""
    teacher_logits = teacher_logits.detach()

    def kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        log_p_student = F.log_softmax(student / temperature, dim=1)
        log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
        return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")

    both = kl(student_logits, teacher_logits) + kl(student_logits.T, teacher_logits.T)
    return 0.5 * both * temperature**2
