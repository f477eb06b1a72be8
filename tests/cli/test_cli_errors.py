"""Bad input reaches the user as one clear line (exit status 2), and never destroys what was saved before."""

import json

import pytest
from PIL import Image

from aladin.cli.main import main


def _dataset(root, captions=None, extra_line=None):
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 48), (200, 30, 30)).save(root / "images" / name)
    lines = [
        {"image": "a.png", "captions": captions or ["a red picture"], "split": "train"},
        {"image": "b.png", "captions": ["another red picture"], "split": "test"},
    ]
    text = "\n".join(json.dumps(line) for line in lines)
    if extra_line is not None:
        text += "\n" + extra_line
    (root / "captions.jsonl").write_text(text + "\n")
    return root


def _run(capsys, *argv):
    code = main(list(argv))
    # progress bars share stderr; the error itself must be exactly one line
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("aladin: error:")]
    assert len(errors) == 1
    return code, errors[0]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda r: _dataset(
                r, extra_line=json.dumps({"image": "missing.png", "captions": ["x"], "split": "train"})
            ),
            "missing.png",
        ),
        (lambda r: _dataset(r, captions=["fine", "   "]), "captions"),
        (
            lambda r: _dataset(
                r, extra_line=json.dumps({"img": "a.png", "captions": ["x"], "split": "train"})
            ),
            "img",
        ),
        (lambda r: _dataset(r, extra_line="{not json"), "captions.jsonl:3"),
    ],
    ids=["missing-image", "empty-caption", "wrong-field", "bad-json"],
)
def test_bad_dataset_gives_one_line(tmp_path, capsys, make, expected):
    data = make(tmp_path / "data")
    code, err = _run(capsys, "extract", str(data), "--cache", str(tmp_path / "cache"))
    assert code == 2
    assert err.startswith("aladin: error:") and "\n" not in err
    assert expected in err


def test_corrupt_image_names_the_file_and_keeps_existing_cache(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    cache = tmp_path / "cache"
    assert main(["extract", str(data), "--cache", str(cache), "--val-fraction", "0"]) == 0
    before = {p.name: p.read_bytes() for p in (cache / "test").iterdir()}
    (data / "images" / "b.png").write_bytes(b"\x89PNG broken")
    (data / "captions.jsonl").write_text(
        (data / "captions.jsonl").read_text().replace("another red picture", "changed caption")
    )
    code, err = _run(capsys, "extract", str(data), "--cache", str(cache), "--val-fraction", "0")
    assert code == 2 and "b.png" in err and "cannot read image" in err and "\n" not in err
    assert {p.name: p.read_bytes() for p in (cache / "test").iterdir()} == before


def test_mismatched_checkpoint_is_refused(tmp_path, capsys):
    from feature_fixtures import tiny_config

    from aladin.model import AladinModel

    run = tmp_path / "run"
    AladinModel(tiny_config()).save_pretrained(run / "model")
    header = json.loads((run / "model" / "config.json").read_text())
    header["config"]["model"]["num_layers"] = 3
    (run / "model" / "config.json").write_text(json.dumps(header))
    data = _dataset(tmp_path / "data")
    assert main(["extract", str(data), "--cache", str(tmp_path / "cache"), "--val-fraction", "0"]) == 0
    code, err = _run(capsys, "evaluate", "--cache", str(tmp_path / "cache"), "--run", str(run))
    assert code == 2 and "model.safetensors" in err and "\n" not in err


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert "aladin" in capsys.readouterr().out
    for command in ("generate-demo-data", "extract", "train", "evaluate", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: aladin" in capsys.readouterr().out


def test_dataset_check_reports_and_fails_on_problems(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    assert main(["dataset", "check", str(data)]) == 0
    assert "OK" in capsys.readouterr().out
    (data / "images" / "b.png").write_bytes(b"garbage")
    code, err = _run(capsys, "dataset", "check", str(data))
    assert code == 2 and "problem" in err
