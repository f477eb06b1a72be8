"""The index/search commands end to end: a small model over the real (bundled, offline) MiniLM text encoder."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
from index_fixtures import tiny_model, write_dataset, write_images

from aladin.cli.index_commands import register
from aladin.errors import AladinError


def run(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="aladin")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def output_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("cli")
    tiny_model(text_feature_dim=384).save_pretrained(root / "model")
    write_dataset(root / "data", 8)
    index = root / "index"
    run(
        ["index", "build", str(root / "data"), "--model", str(root / "model"), "--out", str(index)]
        + ["--with-texts", "--batch-size", "3", "--region-dtype", "int8", "--factory", "HNSW8"]
    )
    return {"root": str(root), "model": str(root / "model"), "index": str(index), "data": str(root / "data")}


def test_search_prints_json_hits(workspace: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    run(
        [
            "search",
            "a red circle",
            "--index",
            workspace["index"],
            "--model",
            workspace["model"],
            "--k",
            "3",
            "--json",
        ]
    )
    result = output_json(capsys)
    assert result["query"] == "a red circle" and len(result["hits"]) == 3
    assert {"id", "score", "first_stage_score", "path", "external_id"} <= set(result["hits"][0])

    run(
        [
            "search",
            "a red circle",
            "--index",
            workspace["index"],
            "--model",
            workspace["model"],
            "--rerank",
            "0",
            "--json",
        ]
    )
    knn = output_json(capsys)["hits"]
    assert len(knn) == 8 and all(h["score"] == h["first_stage_score"] for h in knn)

    image = str(Path(workspace["data"]) / "images" / "img002.png")
    run(
        [
            "search",
            "--image",
            image,
            "--target",
            "texts",
            "--index",
            workspace["index"],
            "--model",
            workspace["model"],
            "--json",
        ]
    )
    captions = output_json(capsys)["hits"]
    assert len(captions) == 10 and all(h["caption"] for h in captions)


def test_search_prints_a_table(workspace: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    run(["search", "dog", "--index", workspace["index"], "--model", workspace["model"], "--k", "2"])
    table = capsys.readouterr().out
    assert "kNN score" in table and "img0" in table


def test_commands_need_a_model_and_a_query(workspace: dict[str, str]) -> None:
    with pytest.raises(AladinError, match="either a text query or --image"):
        run(["search", "--index", workspace["index"]])
    with pytest.raises(AladinError, match="either a text query or --image"):
        run(["search", "--index", workspace["index"], "--model", workspace["model"]])
    with pytest.raises(AladinError, match="empty query"):
        run(["search", "  ", "--index", workspace["index"], "--model", workspace["model"]])


def test_search_without_model_uses_the_recorded_checkpoint(
    workspace: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(workspace["model"], model)
    index = str(tmp_path / "index")
    run(["index", "build", workspace["data"], "--model", str(model), "--out", index])
    capsys.readouterr()
    run(["search", "dog", "--index", index, "--k", "2", "--json"])
    hits = output_json(capsys)["hits"]
    run(["search", "dog", "--index", index, "--model", str(model), "--k", "2", "--json"])
    assert hits == output_json(capsys)["hits"] and len(hits) == 2

    tiny_model(seed=1, text_feature_dim=384).save_pretrained(model)  # same folder, another model
    with pytest.raises(AladinError, match=r"--model is required.*that built the index \(.*model\)"):
        run(["search", "dog", "--index", index])
    shutil.rmtree(model)
    with pytest.raises(AladinError, match=r"--model is required.*that built the index \(.*model\)"):
        run(["search", "dog", "--index", index])


@pytest.mark.parametrize(
    ("dtype", "flags"), [("pq", ["--pq-nbits", "4"]), ("residual1", ["--residual-centroids", "4"])]
)
def test_trained_store_from_the_command_line(
    workspace: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    dtype: str,
    flags: list[str],
) -> None:
    index = str(tmp_path / "index")
    run(
        ["index", "build", workspace["data"], "--model", workspace["model"], "--out", index]
        + ["--region-dtype", dtype, *flags]
    )
    capsys.readouterr()
    run(["index", "info", index])
    info = " ".join(capsys.readouterr().out.replace("│", " ").split())  # the table wraps long cells
    assert f"{dtype} mean cosine" in info and f"{flags[0][2:].replace('-', '_')}={flags[1]}" in info
    run(["search", "dog", "--index", index, "--model", workspace["model"], "--k", "2", "--json"])
    assert len(output_json(capsys)["hits"]) == 2


def test_add_remove_and_info(
    workspace: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    index = str(Path(workspace["root"]) / "index-copy")
    run(["index", "build", workspace["data"], "--model", workspace["model"], "--out", index])
    new = write_images(tmp_path / "new", 2, first_seed=70)
    run(["index", "add", index, str(tmp_path / "new"), "--model", workspace["model"]])
    assert "added 2 images (ids 8..9)" in capsys.readouterr().out
    run(["index", "remove", index, "0", "9"])
    capsys.readouterr()
    run(["index", "info", index, "--json"])
    info = output_json(capsys)
    assert info["collections"]["images"]["live"] == 8 and info["collections"]["images"]["removed"] == 2
    assert info["model"]["checkpoint"] == workspace["model"]
    run(
        [
            "search",
            "--image",
            str(new[0]),
            "--index",
            index,
            "--model",
            workspace["model"],
            "--k",
            "1",
            "--json",
        ]
    )
    assert output_json(capsys)["hits"][0]["id"] == 8
    run(["index", "info", workspace["index"]])
    assert "int8 mean cosine" in capsys.readouterr().out


def test_a_relative_model_path_is_recorded_so_search_finds_it_from_anywhere(
    workspace: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shutil.copytree(workspace["model"], tmp_path / "work" / "model")
    monkeypatch.chdir(tmp_path / "work")
    run(["index", "build", workspace["data"], "--model", "model", "--out", "index"])  # relative, as typed
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    run(["search", "dog", "--index", str(tmp_path / "work" / "index"), "--k", "2", "--json"])
    assert len(output_json(capsys)["hits"]) == 2


def test_search_where_filters_on_any_backend_and_names_the_column_of_bad_syntax(
    workspace: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--index", workspace["index"], "--model", workspace["model"], "--json"]
    run(
        ["search", "a red circle", *common, "--k", "5", "--where", "id>=5 or path~img001"]
    )  # HNSW: an id selector
    assert sorted(hit["id"] for hit in output_json(capsys)["hits"]) == [1, 5, 6, 7]
    image = str(Path(workspace["data"]) / "images" / "img002.png")
    run(["search", "--image", image, "--target", "texts", *common, "--k", "4", "--where", "id=3"])
    assert [hit["image_id"] for hit in output_json(capsys)["hits"]] == [3, 3]  # captions through their image
    with pytest.raises(AladinError, match=r"^filter 'id>=5 or': column 9: expected a field"):
        run(["search", "a red circle", *common, "--where", "id>=5 or"])


def test_min_score_cuts_the_hits_to_confident_ones(
    workspace: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from calibration_fixtures import calibrate

    from aladin.model.aladin import AladinModel

    search = ["search", "a red circle", "--index", workspace["index"], "--k", "4", "--rerank", "0"]
    with pytest.raises(AladinError, match="no calibration"):
        run([*search, "--model", workspace["model"], "--min-score", "0.5"])
    model = tmp_path / "calibrated"
    shutil.copytree(workspace["model"], model)
    calibrate(AladinModel.from_pretrained(model)).save(model)
    run([*search, "--model", str(model), "--json"])
    confidences = [h["confidence"] for h in output_json(capsys)["hits"]]
    assert len(confidences) == 4 and None not in confidences
    cut = sorted(confidences)[2]
    run([*search, "--model", str(model), "--json", "--min-score", str(cut)])
    assert [h["confidence"] for h in output_json(capsys)["hits"]] == [c for c in confidences if c >= cut]
    run([*search, "--model", str(model), "--min-score", str(cut)])
    assert "confidence" in capsys.readouterr().out
    run([*search, "--model", str(model), "--min-score", "1"])
    assert "no confident match" in capsys.readouterr().out
    run([*search, "--model", str(model), "--min-score", "0.5", "--where", "id<0"])  # nothing found at all
    assert "no confident match" not in capsys.readouterr().out
