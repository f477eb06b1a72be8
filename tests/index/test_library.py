"""A photo library as users keep one: paths that resolve from anywhere (and after a move), bad files that do not
stop a build, `index add` that never indexes a file twice, and what the commands say about each."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest
from index_fixtures import ToyTextEncoder, picture, tiny_model, write_dataset, write_images

from aladin.cli.main import main
from aladin.errors import DataError
from aladin.index import IMAGES, TEXTS, IndexConfig, SearchIndex, build_index
from aladin.index.builder import add_images
from aladin.index.metadata import _SCHEMA, ImageRecord, Metadata
from aladin.index.sources import external_id_for
from aladin.model.aladin import AladinModel


def _paths(index: SearchIndex) -> dict[str, str]:
    records = index.meta.images(index.meta.ids(IMAGES))
    return {r.external_id: r.path for r in records.values()}


def test_external_ids_are_posix_paths_relative_to_the_root(tmp_path: Path) -> None:
    assert external_id_for(tmp_path / "photos", tmp_path / "photos" / "a" / "b.jpg") == "a/b.jpg"
    assert external_id_for(tmp_path / "photos", tmp_path / "other.jpg") == (tmp_path / "other.jpg").as_posix()
    assert external_id_for(None, "x.jpg") == Path(os.path.abspath("x.jpg")).as_posix()


def test_paths_resolve_from_any_working_directory_and_after_a_move(
    tmp_path: Path, model: AladinModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_images(tmp_path / "lib" / "photos" / "a", 3)
    monkeypatch.chdir(tmp_path / "lib")
    build_index(Path("photos"), model, Path("photos") / "index", progress=False)  # relative, as users type
    monkeypatch.chdir(tmp_path)
    index = SearchIndex.load(tmp_path / "lib" / "photos" / "index", model)
    assert _paths(index) == {
        f"a/img00{i}.png": str(tmp_path / "lib" / "photos" / "a" / f"img00{i}.png") for i in range(3)
    }
    assert index.meta.missing_files().missing == []

    os.rename(tmp_path / "lib", tmp_path / "moved")  # the index moves with its photos: found again
    moved = SearchIndex.load(tmp_path / "moved" / "photos" / "index", model)
    assert set(_paths(moved).values()) == {
        str(tmp_path / "moved" / "photos" / "a" / f"img00{i}.png") for i in range(3)
    }
    assert moved.meta.missing_files().missing == []

    os.rename(tmp_path / "moved" / "photos" / "a", tmp_path / "elsewhere")
    missing = SearchIndex.load(tmp_path / "moved" / "photos" / "index", model).meta.missing_files()
    assert str(missing) == f"3 of 3 indexed files are missing under {tmp_path / 'moved' / 'photos'}"


def test_an_index_that_records_no_root_keeps_its_paths_as_stored(tmp_path: Path) -> None:
    legacy = tmp_path / "meta.000001.sqlite"  # as written before image roots were recorded
    with sqlite3.connect(legacy) as connection:
        connection.executescript(_SCHEMA)
        rows = [(0, str(tmp_path / "abs.png"), "abs.png", "[]"), (1, "rel/cwd.png", "rel/cwd.png", "[]")]
        connection.executemany(
            "INSERT INTO images (id, path, external_id, captions) VALUES (?, ?, ?, ?)", rows
        )
    connection.close()
    (tmp_path / "abs.png").write_bytes(b"x")
    meta = Metadata.open(legacy)
    assert meta.image_root is None
    assert [r.path for r in meta.images([0, 1]).values()] == [str(tmp_path / "abs.png"), "rel/cwd.png"]
    assert len(meta.missing_files().missing) == 1
    meta.write_version(tmp_path / "meta.000002.sqlite", [(2, ImageRecord("new.png", "new.png"))], [], [], [])
    assert Metadata.open(tmp_path / "meta.000002.sqlite").images([1, 2])[2].path == "new.png"


def test_a_bad_file_does_not_stop_a_build(
    tmp_path: Path, model: AladinModel, text_encoder: ToyTextEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    data = write_dataset(tmp_path / "data", 6)
    images = data / "images"
    (images / "img004.png").write_bytes(b"not a picture")  # told from its header, before encoding
    for name in ("img002.png", "img005.png"):  # fail while decoding; img005 alone fills the last batch
        (images / name).write_bytes((images / name).read_bytes()[:60])
    cfg = IndexConfig(batch_size=2)
    with caplog.at_level(logging.WARNING, logger="aladin.index"):
        index = build_index(
            data, model, tmp_path / "index", cfg, text_encoder=text_encoder, with_texts=True, progress=False
        )
    assert sorted(_paths(index)) == ["img000.png", "img001.png", "img003.png"]
    skipped = {Path(s["path"]).name: s["reason"] for s in index.manifest["skipped"]}
    assert set(skipped) == {"img002.png", "img004.png", "img005.png"}
    assert skipped["img004.png"] == "not an image" and "truncated" in skipped["img002.png"]
    assert sum("skipped" in m and "img00" in m for m in caplog.messages) == 3
    assert index.meta.count(TEXTS) == 6  # the captions of the images left out are left out with them
    owners = {t.image_id for t in index.meta.texts(index.meta.ids(TEXTS)).values()}
    assert owners == set(index.meta.ids(IMAGES).tolist())
    assert SearchIndex.load(tmp_path / "index").manifest["skipped"] == index.manifest["skipped"]

    with pytest.raises(DataError, match="img004.png: not an image.*--strict"):
        build_index(
            data, model, tmp_path / "strict", cfg, text_encoder=text_encoder, strict=True, progress=False
        )
    picture(4).save(images / "img004.png")  # repaired: now the first bad file is found while decoding
    with pytest.raises(DataError, match="img002.png: cannot read image"):
        build_index(
            data, model, tmp_path / "strict", cfg, text_encoder=text_encoder, strict=True, progress=False
        )
    assert not (tmp_path / "strict" / "manifest.json").exists()


def test_index_add_never_indexes_a_file_twice(
    tmp_path: Path, model: AladinModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    write_images(photos, 3)
    index = build_index(photos, model, tmp_path / "index", progress=False)
    generation = index.generation

    again = add_images(index, [photos])
    assert (again.ids, len(again.already_indexed), again.summary()) == (
        [],
        3,
        "added 0 images, skipped 3 already indexed",
    )
    assert index.generation == generation  # nothing changed: no new version

    write_images(photos / "new", 1, first_seed=10)
    outside = write_images(tmp_path / "outside", 1, first_seed=20)[0]
    monkeypatch.chdir(photos)  # the same file named relative to another working directory
    report = add_images(index, [".", "img000.png", outside])
    assert report.summary() == "added 2 images (ids 3..4), skipped 4 already indexed"
    assert len(index) == 5 and len(set(_paths(index).values())) == 5
    assert _paths(index)["new/img010.png"] == str(photos / "new" / "img010.png")
    assert outside.as_posix() in _paths(index)  # outside the root: named by its absolute path

    index.remove([0])  # a removed file is no longer indexed: it can come back
    assert add_images(index, [photos / "img000.png"]).ids == [5]


def test_the_commands_say_what_they_left_out_and_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = tmp_path / "model"
    tiny_model(text_feature_dim=384).save_pretrained(model)
    photos = tmp_path / "photos"
    write_images(photos, 3)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    index = str(tmp_path / "index")

    assert main(["index", "build", str(photos), "--out", index, "--model", str(model)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "indexed 3 images" in out
        and f"left out 1 file(s) that cannot be indexed: {photos / 'broken.jpg'}: " in out
    )

    assert (
        main(
            [
                "index",
                "build",
                str(photos),
                "--out",
                str(tmp_path / "strict"),
                "--model",
                str(model),
                "--strict",
            ]
        )
        == 2
    )
    assert "broken.jpg" in capsys.readouterr().err

    assert main(["index", "add", index, str(photos), "--model", str(model)]) == 0
    assert "added 0 images, skipped 3 already indexed, skipped 1 that cannot be indexed" in " ".join(
        capsys.readouterr().out.split()
    )

    (photos / "img001.png").unlink()
    assert main(["search", "a red circle", "--index", index, "--json"]) == 0
    err = capsys.readouterr().err
    assert f"aladin: warning: 1 of 3 indexed files are missing under {photos}" in err


def test_an_add_that_fails_to_publish_leaves_the_loaded_index_as_it_was(
    tmp_path: Path, model: AladinModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aladin.index.update as update_module

    write_images(tmp_path / "photos", 2)
    index = build_index(tmp_path / "photos", model, tmp_path / "index", progress=False)
    before = dict(index.manifest)
    (tmp_path / "photos" / "broken.png").write_bytes(b"not a picture")  # left out: listed as skipped
    write_images(tmp_path / "photos" / "new", 1, first_seed=7)

    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(update_module, "write_manifest", fail)
    with pytest.raises(OSError, match="disk full"):
        add_images(index, [tmp_path / "photos"])
    assert index.manifest == before  # nothing of the failed add, the files it left out included
