"""`aladin index sync`: after files are added, changed, removed and renamed, the synced index equals a fresh build
of the folder; moved files keep their vectors; a sync stopped at any step leaves the previous version and the
next one finishes; --dry-run writes nothing; --watch syncs as files change."""

from __future__ import annotations

import json
import os
import queue
import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from index_fixtures import ToyImageEncoder, ToyTextEncoder, picture, tiny_model, write_images
from PIL import Image

from aladin.cli.main import main
from aladin.config import ImageEncoderConfig
from aladin.encoders.image import RegionBatch
from aladin.errors import AladinError
from aladin.index import IMAGES, IndexConfig, SearchIndex, build_index
from aladin.index.manifest import MANIFEST_NAME, sha256_file
from aladin.index.sync import SyncReport, plan_sync, sync_folder, watch_folder
from aladin.model.aladin import AladinModel
from aladin.search import Searcher

CFG = IndexConfig(batch_size=4)


class CountingEncoder(ToyImageEncoder):
    """The toy encoder, counting the images it encodes (a move must encode none)."""

    def __init__(self) -> None:
        super().__init__(ImageEncoderConfig(name="toy-grid"))
        self.encoded = 0

    def encode(self, images: list[Image.Image]) -> RegionBatch:
        self.encoded += len(images)
        return super().encode(images)


def _build(folder: Path, out: Path, model: AladinModel) -> SearchIndex:
    return build_index(folder, model, out, CFG, progress=False)


def _contents(index: SearchIndex) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """external id → (global vector, stored regions) of every live image: what "equal" means, ids aside."""
    ids = index.meta.ids(IMAGES)
    records = index.meta.images(ids)
    vectors = index.collection(IMAGES).vectors.fetch(ids)
    regions, mask = index.lookup(IMAGES, ids)
    return {records[int(i)].external_id: (vectors[n], regions[n][mask[n]].numpy()) for n, i in enumerate(ids)}


def _ranking(index: SearchIndex) -> list[list[tuple[str, float]]]:
    """Top-5 (external id, score) of a few fixed queries."""
    queries = np.random.default_rng(3).normal(size=(4, 16)).astype(np.float32)
    scores, ids = index.search(IMAGES, queries, 5)
    records = index.meta.images([int(i) for i in ids.ravel() if i >= 0])
    return [
        [(records[int(i)].external_id, round(float(s), 4)) for s, i in zip(*row, strict=True)]
        for row in zip(scores, ids, strict=True)
    ]


def _assert_same(synced: SearchIndex, fresh: SearchIndex) -> None:
    a, b = _contents(synced), _contents(fresh)
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key][0], b[key][0], atol=1e-6, err_msg=key)
        np.testing.assert_allclose(a[key][1], b[key][1], atol=1e-6, err_msg=key)
    assert _ranking(synced) == _ranking(fresh)
    paths = {r.external_id: r.path for r in synced.meta.images(synced.meta.ids(IMAGES)).values()}
    assert paths == {r.external_id: r.path for r in fresh.meta.images(fresh.meta.ids(IMAGES)).values()}


def _edit(photos: Path) -> None:
    """Two new files, one changed, two removed, one renamed and one moved into a sub-folder."""
    write_images(photos, 2, first_seed=20)
    picture(99).save(photos / "img002.png")
    (photos / "img003.png").unlink()
    (photos / "img004.png").unlink()
    (photos / "img005.png").rename(photos / "renamed.png")
    (photos / "sub").mkdir()
    (photos / "img006.png").rename(photos / "sub" / "img006.png")


def _reload(index: SearchIndex, model: AladinModel) -> SearchIndex:
    return SearchIndex.load(index.directory, model)


def test_a_sync_after_adds_changes_removals_and_renames_equals_a_fresh_build(
    tmp_path: Path, model: AladinModel
) -> None:
    photos = tmp_path / "photos"
    write_images(photos, 10)
    index = _build(photos, tmp_path / "index", model)
    generation = index.generation
    _edit(photos)

    report = sync_folder(_reload(index, model), photos)

    plan = report.plan
    assert [os.path.basename(p) for p in plan.added] == ["img020.png", "img021.png"]
    assert [os.path.basename(p) for _, p in plan.changed] == ["img002.png"]
    assert sorted(os.path.basename(p) for _, p in plan.removed) == ["img003.png", "img004.png"]
    assert sorted(os.path.basename(new) for _, _, new in plan.moved) == ["img006.png", "renamed.png"]
    synced = _reload(index, model)
    assert synced.generation == generation + 1  # one update
    _assert_same(synced, _build(photos, tmp_path / "fresh", model))
    assert sync_folder(synced, photos).plan.changes == 0  # and nothing is left to do
    assert synced.generation == generation + 1


def test_a_moved_file_keeps_its_id_and_vectors_and_is_not_encoded_again(
    tmp_path: Path, model: AladinModel
) -> None:
    photos = tmp_path / "photos"
    write_images(photos, 6)
    index = _build(photos, tmp_path / "index", model)
    by_name = {os.path.basename(r.path): i for i, r in index.meta.images(index.meta.ids(IMAGES)).items()}
    moved = np.array([by_name["img001.png"], by_name["img004.png"]])
    vectors = index.collection(IMAGES).vectors.fetch(moved)
    regions = index.lookup(IMAGES, moved)[0].numpy()
    (photos / "img001.png").rename(photos / "holiday.png")
    (photos / "a").mkdir()
    (photos / "img004.png").rename(photos / "a" / "four.png")
    encoder = CountingEncoder()

    report = sync_folder(index, photos, image_encoder=encoder)

    assert encoder.encoded == 0 and report.plan.changes == 2 and len(report.plan.moved) == 2
    assert np.array_equal(index.collection(IMAGES).vectors.fetch(moved), vectors)  # bit for bit
    assert np.array_equal(index.lookup(IMAGES, moved)[0].numpy(), regions)
    records = _reload(index, model).meta.images(moved)
    assert [(r.external_id, r.path) for r in records.values()] == [
        ("holiday.png", str(photos / "holiday.png")),
        ("a/four.png", str(photos / "a" / "four.png")),
    ]
    hits = _reload(index, model).search(IMAGES, vectors[:1], 1)[1]
    assert hits[0, 0] == moved[0]  # found under its id, now at its new path


def test_only_new_and_changed_files_are_encoded_and_a_touched_file_is_not(
    tmp_path: Path, model: AladinModel
) -> None:
    photos = tmp_path / "photos"
    write_images(photos, 5)
    index = _build(photos, tmp_path / "index", model)
    os.utime(photos / "img000.png", ns=(1, 1))  # same bytes, new mtime: hashed, recorded, not encoded
    picture(50).save(photos / "img001.png")
    write_images(photos, 1, first_seed=30)
    encoder = CountingEncoder()

    report = sync_folder(index, photos, image_encoder=encoder)

    assert encoder.encoded == 2 and [os.path.basename(p) for _, p in report.plan.touched] == ["img000.png"]
    again = CountingEncoder()
    assert sync_folder(index, photos, image_encoder=again).plan.states == {}  # nothing even hashed now
    assert again.encoded == 0


def test_a_sync_with_nothing_to_do_writes_no_version(tmp_path: Path, model: AladinModel) -> None:
    photos = tmp_path / "photos"
    write_images(photos, 3)
    (photos / "broken.png").write_bytes(b"not a picture")  # left out by the folder scan
    whole = (photos / "img002.png").read_bytes()
    (photos / "cut.png").write_bytes(whole[: len(whole) // 2])  # left out when decoded: tried again each time
    index = _build(photos, tmp_path / "index", model)
    manifest = (tmp_path / "index" / MANIFEST_NAME).read_bytes()

    report = sync_folder(index, photos)

    assert [s.path for s in report.plan.skipped] == [str(photos / "broken.png")]
    assert [s.path for s in report.unreadable] == [str(photos / "cut.png")]
    assert report.generation == index.generation == 1 and report.images == 3
    assert (tmp_path / "index" / MANIFEST_NAME).read_bytes() == manifest


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_dry_run_says_what_would_change_and_writes_nothing(
    tmp_path: Path, model: AladinModel, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    checkpoint = tmp_path / "model"
    tiny_model(text_feature_dim=384).save_pretrained(checkpoint)
    photos = tmp_path / "photos"
    write_images(photos, 8)
    index_dir = tmp_path / "index"
    assert main(["index", "sync", str(photos), "--index", str(index_dir), "--model", str(checkpoint)]) == 0
    assert "built an index of 8 images" in capsys.readouterr().out
    _edit(photos)
    before = _listing(index_dir)

    args = ["index", "sync", str(photos), "--index", str(index_dir), "--model", str(checkpoint)]
    assert main([*args, "--dry-run"]) == 0

    out = capsys.readouterr().out
    assert "would change: 2 added, 1 changed, 2 removed, 2 moved" in out
    assert "moved    img005.png -> renamed.png (id 5)" in out and "added    img021.png" in out
    assert _listing(index_dir) == before
    assert main(args) == 0
    assert (
        "synced (version 2): 2 added, 1 changed, 2 removed, 2 moved; 8 images indexed"
        in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "where",
    [
        "aladin.index.builder.embed_images",  # while encoding
        "aladin.index.metadata.Metadata.write_version",  # while writing the new version's files
        "aladin.index.faiss_backend.FaissBackend.save",
        "aladin.index.update.write_manifest",  # at the switch itself
    ],
)
@pytest.mark.parametrize("signal", [KeyboardInterrupt, SystemExit])
def test_a_sync_killed_at_any_step_leaves_the_previous_index_and_the_next_one_finishes(
    tmp_path: Path, model: AladinModel, monkeypatch: pytest.MonkeyPatch, where: str, signal: type
) -> None:
    photos = tmp_path / "photos"
    write_images(photos, 10)
    index = _build(photos, tmp_path / "index", model)
    old = _contents(index)
    _edit(photos)

    with monkeypatch.context() as patch:

        def killed(*_: object, **__: object) -> None:
            raise signal()

        patch.setattr(where, killed)
        with pytest.raises(signal):
            sync_folder(index, photos)

    after = _reload(index, model)
    assert after.generation == index.generation and sorted(_contents(after)) == sorted(old)
    assert not [p.name for p in (tmp_path / "index").iterdir() if ".000002." in p.name]  # nothing left over
    sync_folder(after, photos)
    _assert_same(_reload(index, model), _build(photos, tmp_path / "fresh", model))


def test_a_sync_stopped_after_the_switch_is_complete(
    tmp_path: Path, model: AladinModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    write_images(photos, 10)
    index = _build(photos, tmp_path / "index", model)
    _edit(photos)

    def killed(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("aladin.index.update.collect_garbage", killed)
    with pytest.raises(KeyboardInterrupt):
        sync_folder(index, photos)
    monkeypatch.undo()

    after = _reload(index, model)
    assert sync_folder(after, photos).plan.changes == 0
    _assert_same(after, _build(photos, tmp_path / "fresh", model))


def test_an_index_written_before_file_states_is_adopted_without_encoding(
    tmp_path: Path, model: AladinModel
) -> None:
    photos = tmp_path / "photos"
    write_images(photos, 4)
    index_dir = tmp_path / "index"
    _build(photos, index_dir, model)
    manifest = json.loads((index_dir / MANIFEST_NAME).read_text())
    meta = index_dir / manifest["meta"]
    with sqlite3.connect(meta) as db:  # the metadata as aladin wrote it before `sync` existed
        db.execute("DROP TABLE files")
    manifest["files"][manifest["meta"]] = {"bytes": meta.stat().st_size, "sha256": sha256_file(meta)}
    (index_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    index = SearchIndex.load(index_dir, model)
    assert all(state is None for _, state in index.meta.live_files().values())
    encoder = CountingEncoder()

    report = sync_folder(index, photos, image_encoder=encoder)

    assert encoder.encoded == 0 and len(report.plan.touched) == 4 and report.plan.changes == 0
    picture(77).save(photos / "img003.png")  # from now on a change is seen
    assert [os.path.basename(p) for _, p in sync_folder(index, photos).plan.changed] == ["img003.png"]


def test_sync_refuses_another_folder_than_the_index_holds(tmp_path: Path, model: AladinModel) -> None:
    write_images(tmp_path / "photos", 2)
    write_images(tmp_path / "other", 2)
    index = _build(tmp_path / "photos", tmp_path / "index", model)
    with pytest.raises(AladinError, match="not .*other; sync that folder"):
        plan_sync(index, tmp_path / "other")
    assert len(_reload(index, model)) == 2


def test_an_emptied_folder_empties_the_index(tmp_path: Path, model: AladinModel) -> None:
    photos = tmp_path / "photos"
    write_images(photos, 3)
    index = _build(photos, tmp_path / "index", model)
    for path in photos.iterdir():
        path.unlink()
    assert len(sync_folder(index, photos).plan.removed) == 3
    assert len(_reload(index, model)) == 0


def test_watch_syncs_as_files_change_and_stops_on_request(tmp_path: Path, model: AladinModel) -> None:
    photos = tmp_path / "photos"
    write_images(photos, 3)
    index = _build(photos, photos / ".index", model)  # inside the folder: its own writes are no change
    reports: queue.Queue[SyncReport] = queue.Queue()
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch_folder, args=(index, photos, reports.put, stop), kwargs={"debounce_ms": 50}
    )
    watcher.start()
    try:
        assert reports.get(timeout=60).plan.changes == 0  # the first sync, at start
        write_images(photos, 1, first_seed=40)
        while not (report := reports.get(timeout=60)).plan.added:
            pass
        assert [os.path.basename(p) for p in report.plan.added] == ["img040.png"]
        shutil.move(photos / "img040.png", photos / "forty.png")
        while not (report := reports.get(timeout=60)).plan.moved:
            pass
    finally:
        stop.set()
        watcher.join(timeout=60)
    assert not watcher.is_alive()
    assert sorted(
        r.external_id for r in _reload(index, model).meta.images(index.meta.ids(IMAGES)).values()
    ) == [
        "forty.png",
        "img000.png",
        "img001.png",
        "img002.png",
    ]


def test_on_milvus_a_moved_file_is_found_by_its_new_folder_and_keeps_its_vector(
    tmp_path: Path, model: AladinModel, text_encoder: ToyTextEncoder
) -> None:
    pytest.importorskip("milvus_lite")
    pictures = tmp_path / "pics"
    write_images(pictures / "beach", 3)
    write_images(pictures / "city", 3, first_seed=10)
    cfg = IndexConfig(backend="milvus", batch_size=4)
    index = build_index(pictures, model, tmp_path / "index", cfg, progress=False)
    vector = index.collection(IMAGES).vectors.fetch(np.array([1]))
    (pictures / "beach" / "img001.png").rename(pictures / "city" / "moved.png")

    assert len(sync_folder(index, pictures, image_encoder=CountingEncoder()).plan.moved) == 1

    index = _reload(index, model)
    s = Searcher(index, model, text_encoder, ToyImageEncoder(model.config.image_encoder))
    city = s.search_text("a red circle", k=10, rerank=0, where='folder == "city"')
    assert {h.id: h.external_id for h in city}[1] == "city/moved.png"
    assert 1 not in {h.id for h in s.search_text("a red circle", k=10, rerank=0, where='folder == "beach"')}
    assert np.array_equal(index.collection(IMAGES).vectors.fetch(np.array([1])), vector)


def test_a_file_deleted_while_the_sync_looks_at_the_folder_counts_as_gone(
    tmp_path: Path, model: AladinModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aladin.index.sync as sync_module

    photos = tmp_path / "photos"
    write_images(photos, 3)
    index = _build(photos, tmp_path / "index", model)
    write_images(photos, 1, first_seed=9)
    os.utime(photos / "img001.png", ns=(1, 1))  # to be hashed, as the new file is
    scan = sync_module.scan_image_folder

    def listed_then_deleted(folder: Path) -> tuple[list[Path], list]:
        found = scan(folder)
        (photos / "img001.png").unlink()
        (photos / "img009.png").unlink()
        return found

    monkeypatch.setattr(sync_module, "scan_image_folder", listed_then_deleted)
    plan = plan_sync(index, photos)
    assert [os.path.basename(p) for _, p in plan.removed] == ["img001.png"] and not plan.added
