from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aladin.config import TextEncoderConfig
from aladin.encoders.text import HFTextEncoder, TextEncoder, build_text_encoder
from aladin.errors import AladinError

SHORT = "A man riding a horse."
LONG = "Two brown dogs are playing with a red ball on the green grass near a quiet lake at sunset."


def real(batch_tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return batch_tensor[mask]


def test_minilm_shapes_and_masks(minilm: TextEncoder) -> None:
    batch = minilm.encode([SHORT, LONG])
    lengths = minilm.lengths([SHORT, LONG])
    assert minilm.feature_dim == 384
    assert batch.tokens.shape == (2, max(lengths), 384) and batch.tokens.dtype == torch.float32
    assert batch.input_ids.dtype == torch.int64 and batch.input_ids.shape == batch.token_mask.shape
    assert batch.attention_mask.sum(1).tolist() == lengths
    for row, n in enumerate(lengths):
        # [CLS] at 0 and [SEP] at n-1 attend but are not scored; padding does neither
        assert batch.attention_mask[row, :n].all() and not batch.attention_mask[row, n:].any()
        assert batch.token_mask[row, 1 : n - 1].all()
        assert not batch.token_mask[row, 0] and not batch.token_mask[row, n - 1 :].any()
        assert (batch.tokens[row, n:] == 0).all()
    cls_id, sep_id = minilm.tokenizer.cls_token_id, minilm.tokenizer.sep_token_id
    assert (batch.input_ids[:, 0] == cls_id).all()
    assert batch.input_ids[0, lengths[0] - 1] == sep_id


def test_same_caption_same_features_whatever_the_padding(minilm: TextEncoder) -> None:
    alone = minilm.encode([SHORT])
    padded = minilm.encode([LONG, SHORT, "a cat"])
    n = alone.tokens.shape[1]
    torch.testing.assert_close(padded.tokens[1, :n], alone.tokens[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(padded.token_mask[1, :n], alone.token_mask[0])
    assert not padded.token_mask[1, n:].any()
    chunked = HFTextEncoder(TextEncoderConfig(), batch_size=1)  # shares nothing with the fixture
    torch.testing.assert_close(
        chunked.encode([LONG, SHORT, "a cat"]).tokens, padded.tokens, atol=1e-4, rtol=1e-4
    )


def test_truncation_and_word_pieces(minilm: TextEncoder) -> None:
    short = HFTextEncoder(TextEncoderConfig(max_length=8))
    batch = short.encode([LONG])
    assert batch.tokens.shape[1] == 8 and short.lengths([LONG]) == [8]
    assert batch.input_ids[0, 7] == short.tokenizer.sep_token_id
    assert len(short.word_pieces(LONG)) == int(batch.token_mask.sum()) == 6
    assert minilm.word_pieces(SHORT) == ["a", "man", "riding", "a", "horse", "."]
    batch = minilm.encode([SHORT, LONG, "skateboarders"])
    for row, text in enumerate([SHORT, LONG, "skateboarders"]):
        assert len(minilm.word_pieces(text)) == int(batch.token_mask[row].sum())
    assert minilm.word_pieces("skateboarders") == ["skate", "##board", "##ers"]


def test_unknown_name_and_bad_inputs(minilm: TextEncoder, tmp_path: Path) -> None:
    with pytest.raises(AladinError, match="not-a-model"):
        build_text_encoder(TextEncoderConfig(name="not-a-model"))
    with pytest.raises(AladinError, match="neither"):
        build_text_encoder(TextEncoderConfig(name=str(tmp_path)))  # a folder, but no model in it
    with pytest.raises(AladinError, match="no texts"):
        minilm.encode([])
    with pytest.raises(AladinError, match="finetune_layers"):
        build_text_encoder(TextEncoderConfig(finetune_layers=7))


def check_tail_reproduces(full: TextEncoder, split: TextEncoder, texts: list[str]) -> None:
    expected = full.encode(texts)
    trunk = split.encode(texts)
    mask = trunk.attention_mask
    assert torch.equal(mask, expected.attention_mask) and torch.equal(trunk.token_mask, expected.token_mask)
    assert not torch.allclose(trunk.tokens[mask], expected.tokens[mask], atol=1e-2)  # really before the tail
    tail = split.make_tail()
    assert tail is not None and full.make_tail() is None
    tail.eval()
    out = tail(trunk.tokens, mask)
    assert out.shape == expected.tokens.shape
    torch.testing.assert_close(out[mask], expected.tokens[mask], atol=1e-4, rtol=1e-4)
    tail.train()
    out[mask].sum().backward()
    assert all(p.grad is not None for p in tail.parameters() if p.requires_grad)
    assert all(p.requires_grad for p in tail.parameters())


def test_minilm_finetune_tail_reproduces_the_model(minilm: TextEncoder) -> None:
    split = build_text_encoder(TextEncoderConfig(finetune_layers=2))
    check_tail_reproduces(minilm, split, [SHORT, LONG, "a cat"])


# ---- any local BERT-family folder works the same way -----------------------------------------------------
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "the",
    "dog",
    "cat",
    "play",
    "##ing",
    "red",
    "ball",
    ".",
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    # positional: the vocab file is `vocab_file` in transformers 4 and `vocab` in 5
    BertTokenizerFast(str(vocab), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def test_local_bert_folder(tiny_bert: Path) -> None:
    enc = build_text_encoder(TextEncoderConfig(name=str(tiny_bert)))
    batch = enc.encode(["a dog playing", "the cat ."])
    assert enc.feature_dim == 32 and batch.tokens.shape == (2, 6, 32)
    assert enc.word_pieces("a dog playing") == ["a", "dog", "play", "##ing"]
    assert batch.token_mask.sum(1).tolist() == [4, 3]
    assert batch.attention_mask.sum(1).tolist() == [6, 5]
    same = enc.encode(["the cat ."])
    torch.testing.assert_close(batch.tokens[1, :5], same.tokens[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_local_bert_finetune_tail(tiny_bert: Path, layers: int) -> None:
    full = build_text_encoder(TextEncoderConfig(name=str(tiny_bert)))
    split = build_text_encoder(TextEncoderConfig(name=str(tiny_bert), finetune_layers=layers))
    check_tail_reproduces(full, split, ["a dog playing with the red ball .", "the cat", "a red cat ."])
