import json

import pytest
import torch
from feature_fixtures import make_features, tiny_config

import aladin.checkpoint as checkpoint
from aladin.errors import CheckpointError
from aladin.model import AladinModel, LinearGlobalModel
from aladin.model.features import embed_split


def test_round_trip_gives_identical_embeddings(tmp_path):
    torch.manual_seed(0)
    model = AladinModel(tiny_config()).eval()
    model.save_pretrained(tmp_path / "ckpt", {"note": "x"})
    loaded = AladinModel.from_pretrained(tmp_path / "ckpt")
    feats = make_features(8, seed=0)
    a_img, a_txt = embed_split(model, feats)
    b_img, b_txt = embed_split(loaded, feats)
    assert torch.equal(a_img.global_vector, b_img.global_vector)
    assert torch.equal(a_txt.words, b_txt.words)
    assert loaded.info == {"note": "x"}
    assert loaded.fingerprint() == model.fingerprint()
    assert AladinModel(tiny_config()).fingerprint() != model.fingerprint()


def test_mismatched_config_is_refused_with_one_line(tmp_path):
    model = AladinModel(tiny_config())
    model.save_pretrained(tmp_path / "ckpt")
    header = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    header["config"]["model"]["embed_dim"] = 64
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError) as err:
        AladinModel.from_pretrained(tmp_path / "ckpt")
    assert "model.safetensors" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h.update(format_version=99), "format_version 99"),
        (lambda h: h.update(kind="linear-global-baseline"), "field 'kind'"),
        (lambda h: h["config"]["model"].update(bogus=1), "different config"),
    ],
)
def test_bad_headers_are_refused(tmp_path, edit, message):
    AladinModel(tiny_config()).save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    header = json.loads(path.read_text())
    edit(header)
    path.write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match=message):
        AladinModel.from_pretrained(tmp_path / "ckpt")


def test_corrupt_weights_and_missing_folder(tmp_path):
    AladinModel(tiny_config()).save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        AladinModel.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        AladinModel.from_pretrained(tmp_path / "nowhere")


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    first = AladinModel(tiny_config())
    first.save_pretrained(tmp_path / "ckpt")

    def exploding_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save", exploding_save)
    with pytest.raises(OSError):
        AladinModel(tiny_config()).save_pretrained(tmp_path / "ckpt")
    assert AladinModel.from_pretrained(tmp_path / "ckpt").fingerprint() == first.fingerprint()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_baseline_round_trip(tmp_path):
    model = LinearGlobalModel(32, 24, 16)
    model.save_pretrained(tmp_path / "b")
    loaded = LinearGlobalModel.from_pretrained(tmp_path / "b")
    x = torch.randn(3, 5, 32)
    mask = torch.ones(3, 5, dtype=torch.bool)
    assert torch.equal(model.encode_image(x, mask), loaded.encode_image(x, mask))
    with pytest.raises(CheckpointError, match="kind"):
        AladinModel.from_pretrained(tmp_path / "b")
