"""The ALADIN model: an alignment head (teacher) and a matching head (student) over shared contextualised features."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aladin.checkpoint import config_schema_version, load_state_strict, read_checkpoint, save_checkpoint
from aladin.config import AladinConfig, config_to_dict, model_config_from_saved
from aladin.migrations import SCHEMA_VERSION
from aladin.model.calibration import Calibration, load_calibration
from aladin.model.layers import LogitScale, SequenceEncoder, masked_mean
from aladin.model.rerank import RerankSetting

CHECKPOINT_KIND = "aladin"


@dataclass
class ImageEmbedding:
    """What the search index keeps per image: normalised regions for re-ranking, one global vector for kNN."""

    regions: torch.Tensor  # [B, R, E], L2-normalised
    region_mask: torch.Tensor  # [B, R]
    global_vector: torch.Tensor  # [B, G], L2-normalised


@dataclass
class TextEmbedding:
    words: torch.Tensor  # [B, L, E], L2-normalised (times the learned word weight when the model has them)
    word_mask: torch.Tensor  # [B, L]: scored words (no [CLS]/[SEP]/padding)
    global_vector: torch.Tensor  # [B, G], L2-normalised


class MatchingHead(nn.Module):
    """Student: its own transformer over the teacher's contextualised sequence, pooled to one vector."""

    def __init__(
        self,
        embed_dim: int,
        global_dim: int,
        num_layers: int,
        num_heads: int,
        ff_dim: int,
        dropout: float,
        pooling: str,
    ) -> None:
        super().__init__()
        self.encoder = SequenceEncoder(embed_dim, embed_dim, num_layers, num_heads, ff_dim, dropout)
        self.project = nn.Linear(embed_dim, global_dim)
        self.pooling = pooling

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor
    ) -> torch.Tensor:
        out = self.encoder(hidden, attention_mask)
        if self.pooling == "max":
            pooled = out.masked_fill(~pool_mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        else:
            pooled = masked_mean(out, pool_mask)
        return F.normalize(self.project(pooled), dim=-1)


class PooledLinearHead(nn.Module):
    """Student over the frozen encoder features: masked mean, then one linear map (the linear global
    baseline's form, which on small real-photo sets generalises better than anything deeper)."""

    def __init__(self, in_dim: int, global_dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(in_dim, global_dim)

    def forward(
        self, features: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor
    ) -> torch.Tensor:
        return F.normalize(self.project(masked_mean(features, pool_mask)), dim=-1)


class DetectorHead(nn.Module):
    """Student that approximates the teacher's form in one vector: each dimension is a learned detector.

    An image's vector holds each detector's best response over its regions (max), as the teacher takes each
    word's best region; a caption's vector holds how much it asks for each detector (the mean over its words of
    a non-negative demand), as the teacher takes the mean over words. Their dot product is a non-negatively
    weighted sum of best-region responses, where a pooled vector blurs which attribute belongs to which object.
    """

    def __init__(self, in_dim: int, hidden_dim: int, global_dim: int, pooling: str) -> None:
        super().__init__()
        self.detect = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, global_dim)
        )
        self.pooling = pooling  # "max": image regions; "demand": caption words

    def forward(
        self, features: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor
    ) -> torch.Tensor:
        responses = self.detect(features)
        if self.pooling == "max":
            filled = responses.masked_fill(~pool_mask.unsqueeze(-1), float("-inf"))
            pooled = filled.amax(dim=1).nan_to_num(neginf=0.0)  # no region at all: a zero vector
        else:
            pooled = masked_mean(F.relu(responses), pool_mask)
        # normalised in float32, so a vector of zeros (no word asks for anything) stays zero in float16 too
        return F.normalize(pooled.float(), dim=-1).to(responses.dtype)


def _encoder_tail(config: AladinConfig, side: str) -> nn.Module | None:
    """A trainable copy of the encoder's last layers (pretrained weights), when the config fine-tunes them."""
    if side == "image" and config.image_encoder.finetune_layers:
        from aladin.encoders.image import build_image_encoder

        return build_image_encoder(config.image_encoder).make_tail()
    if side == "text" and config.text_encoder.finetune_layers:
        from aladin.encoders.text import build_text_encoder

        return build_text_encoder(config.text_encoder).make_tail()
    return None


class AladinModel(nn.Module):
    """Both heads. Stage 1 trains `image_encoder`, `text_encoder`, `alignment_scale`; stage 2 the matching heads."""

    def __init__(self, config: AladinConfig) -> None:
        super().__init__()
        self.config = config
        # Fine-tuned encoder layers: the feature cache holds the hidden states before them.
        self.image_tail = _encoder_tail(config, "image")
        self.text_tail = _encoder_tail(config, "text")
        m = config.model
        common = dict(num_layers=m.num_layers, num_heads=m.num_heads, ff_dim=m.ff_dim, dropout=m.dropout)
        self.image_encoder = SequenceEncoder(
            m.image_feature_dim, m.embed_dim, position_dim=m.box_dim, **common
        )
        self.text_encoder = SequenceEncoder(m.text_feature_dim, m.embed_dim, **common)
        self.alignment_scale = LogitScale()
        self.word_weight = nn.Linear(m.embed_dim, 1) if m.word_weights else None
        self.image_matching: nn.Module
        self.text_matching: nn.Module
        if m.matching_form == "detectors":
            frozen = m.matching_input == "frozen"
            image_in, text_in = (m.image_feature_dim, m.text_feature_dim) if frozen else (m.embed_dim,) * 2
            self.image_matching = DetectorHead(image_in, m.ff_dim, m.global_dim, "max")
            self.text_matching = DetectorHead(text_in, m.ff_dim, m.global_dim, "demand")
        elif m.matching_input == "frozen":
            self.image_matching = PooledLinearHead(m.image_feature_dim, m.global_dim)
            self.text_matching = PooledLinearHead(m.text_feature_dim, m.global_dim)
        else:
            student = dict(common, num_layers=m.matching_layers, pooling=m.global_pooling)
            self.image_matching = MatchingHead(m.embed_dim, m.global_dim, **student)
            self.text_matching = MatchingHead(m.embed_dim, m.global_dim, **student)
        self.matching_scale = LogitScale()
        self.info: dict[str, Any] = {}
        #: Served score → P(true match), fitted on validation (None: hits carry no confidence).
        self.calibration: Calibration | None = None

    # ---- encoding -------------------------------------------------------------------------------
    def image_features(self, regions: torch.Tensor) -> torch.Tensor:
        """The encoder's region features, after its fine-tuned tail when there is one."""
        return regions if self.image_tail is None else self.image_tail(regions)

    def text_features(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return tokens if self.text_tail is None else self.text_tail(tokens, attention_mask)

    def image_hidden(
        self, regions: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor
    ) -> torch.Tensor:
        """Contextualised, unnormalised region features: the teacher's view (and the contextual student's input)."""
        return self.image_encoder(self.image_features(regions), region_mask, boxes)

    def text_hidden(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(self.text_features(tokens, attention_mask), attention_mask)

    @property
    def student_reads_frozen(self) -> bool:
        return self.config.model.matching_input == "frozen"

    def scored_words(self, hidden: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Unit word vectors, each scaled by its learned weight when word weights are on.

        Weights are a softmax over the caption's words times their count (mean 1), and are ≥ 0, so
        max over regions of (weight × cosine) = weight × max cosine: every scorer that takes the max over
        regions and the mean over words computes the weighted mean without knowing about the weights.
        """
        words = F.normalize(hidden, dim=-1)
        if self.word_weight is None:
            return words
        logits = self.word_weight(hidden).squeeze(-1).float().masked_fill(~token_mask, float("-inf"))
        weights = torch.nan_to_num(logits.softmax(dim=-1)) * token_mask.sum(dim=-1, keepdim=True)
        return words * weights.unsqueeze(-1).to(words.dtype)

    def encode_image(
        self, regions: torch.Tensor, boxes: torch.Tensor, region_mask: torch.Tensor, with_global: bool = True
    ) -> ImageEmbedding:
        """regions [B, R, Di], boxes [B, R, 5], region_mask [B, R] → normalised regions and global vector."""
        hidden = self.image_hidden(regions, boxes, region_mask)
        global_vector = hidden.new_zeros(0)
        if with_global:
            student_in = self.image_features(regions) if self.student_reads_frozen else hidden
            global_vector = self.image_matching(student_in, region_mask, region_mask)
        return ImageEmbedding(F.normalize(hidden, dim=-1), region_mask, global_vector)

    def encode_text(
        self,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor,
        token_mask: torch.Tensor,
        with_global: bool = True,
    ) -> TextEmbedding:
        """tokens [B, L, Dt]; attention over real tokens incl. [CLS]/[SEP]; scoring only over token_mask."""
        hidden = self.text_hidden(tokens, attention_mask)
        global_vector = hidden.new_zeros(0)
        if with_global:
            student_in = self.text_features(tokens, attention_mask) if self.student_reads_frozen else hidden
            global_vector = self.text_matching(student_in, attention_mask, token_mask)
        return TextEmbedding(self.scored_words(hidden, token_mask), token_mask, global_vector)

    def alignment_parameters(self) -> list[nn.Parameter]:
        tails = [t for t in (self.image_tail, self.text_tail) if t is not None]
        return [
            *(p for tail in tails for p in tail.parameters()),
            *self.image_encoder.parameters(),
            *self.text_encoder.parameters(),
            *self.alignment_scale.parameters(),
            *(self.word_weight.parameters() if self.word_weight is not None else ()),
        ]

    def matching_parameters(self) -> list[nn.Parameter]:
        return [
            *self.image_matching.parameters(),
            *self.text_matching.parameters(),
            *self.matching_scale.parameters(),
        ]

    @property
    def rerank(self) -> RerankSetting:
        """The re-rank setting chosen on validation when this student was trained (the legacy default for
        checkpoints saved without one)."""
        return RerankSetting.from_info(self.info)

    # ---- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, info: dict[str, Any] | None = None) -> Path:
        """config.json + model.safetensors, written atomically."""
        return save_checkpoint(
            directory, CHECKPOINT_KIND, config_to_dict(self.config), self.state_dict(), info, SCHEMA_VERSION
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, map_location: str | torch.device = "cpu", calibrated: bool = True
    ) -> AladinModel:
        """Load a checkpoint folder, refusing other format versions or weights that do not match the config;
        with its calibration.json unless `calibrated` is False (to refit one that no longer fits)."""
        raw, state, info = read_checkpoint(directory, CHECKPOINT_KIND)
        where = f"{Path(directory) / 'config.json'}: config"
        config = model_config_from_saved(raw, config_schema_version(directory), where)
        model = cls(config)
        load_state_strict(model, state, Path(directory) / "model.safetensors")
        model.info = info
        if calibrated:
            model.calibration = load_calibration(directory, model.fingerprint, model.rerank.fusion)
        return model.to(map_location).eval()

    def fingerprint(self) -> str:
        """Identifies these exact weights, so an index built by another model is refused."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().float().numpy().tobytes())
        return digest.hexdigest()[:16]
