"""Issue #23/#24 on the index: one external id for build and add, the store default in `index info`, a
manifest that is corrupt, points outside its folder or has malformed counts refused in one line, a new
backend as one module plus one registry line, and a query longer than the text encoder reads warned about."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from index_fixtures import tiny_model, write_images

from aladin.cli.main import main
from aladin.errors import AladinError, CheckpointError
from aladin.index import IndexConfig, SearchIndex, build_index
from aladin.index.backend import BACKEND_MODULES
from aladin.index.config import LEGACY_REGION_DTYPE
from aladin.index.faiss_backend import FaissBackend
from aladin.index.metadata import IMAGES, external_id_for
from aladin.model.aladin import AladinModel
from aladin.search.searcher import QueryTruncatedWarning, Searcher


@pytest.fixture
def photos_index(tmp_path: Path, model: AladinModel) -> SearchIndex:
    write_images(tmp_path / "photos", 3)
    return build_index(
        tmp_path / "photos", model, tmp_path / "index", IndexConfig(batch_size=2), progress=False
    )


def _external_ids(index: SearchIndex) -> list[str]:
    records = index.meta.images(index.meta.ids(IMAGES).tolist())
    return [records[i].external_id for i in sorted(records)]


def test_add_and_build_record_the_same_external_id(tmp_path: Path, photos_index: SearchIndex) -> None:
    new = write_images(tmp_path / "photos" / "later", 1, first_seed=10)
    outside = write_images(tmp_path / "elsewhere", 1, first_seed=20)
    photos_index.add([*new, *outside])
    assert _external_ids(photos_index) == [
        "img000.png",
        "img001.png",
        "img002.png",
        "later/img010.png",
        outside[0].absolute().as_posix(),
    ]
    assert external_id_for(tmp_path / "photos", new[0]) == "later/img010.png"


def _edit_manifest(index_dir: Path, edit) -> None:  # noqa: ANN001
    path = index_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_index_info_fills_in_the_store_default(
    tmp_path: Path, photos_index: SearchIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit_manifest(tmp_path / "index", lambda m: m["index_config"].pop("region_dtype"))
    info = SearchIndex.load(tmp_path / "index").info()
    assert info["index_config"]["region_dtype"] == LEGACY_REGION_DTYPE == "float16"  # what such indexes hold
    assert main(["index", "info", str(tmp_path / "index")]) == 0


@pytest.mark.parametrize("bad_id", ["99999999999999999999999", "-5"])
def test_an_id_no_index_can_hold_is_one_line(
    tmp_path: Path, photos_index: SearchIndex, bad_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["index", "remove", str(tmp_path / "index"), "--", bad_id]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("aladin: error:")]
    assert len(errors) == 1 and f"no item with id {bad_id}" in errors[0], errors
    assert len(SearchIndex.load(tmp_path / "index")) == 3


def test_a_truncated_manifest_says_so(tmp_path: Path, photos_index: SearchIndex, capsys) -> None:  # noqa: ANN001
    path = tmp_path / "index" / "manifest.json"
    path.write_text(path.read_text()[:200])
    assert main(["search", "a red circle", "--index", str(tmp_path / "index")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("aladin: error:")]
    assert len(errors) == 1 and "corrupt or truncated" in errors[0], errors


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: m["files"].update({"../escape.f16": {"bytes": 1, "sha256": "x"}}),
            "outside the index folder",
        ),
        (
            lambda m: m["files"].update({"/etc/passwd": {"bytes": 1, "sha256": "x"}}),
            "outside the index folder",
        ),
        (lambda m: m["collections"]["images"]["segments"][0].update(data="../x.f16"), "not one of the index"),
        (lambda m: m.update(meta="/tmp/meta.sqlite"), "not one of the index"),
        (lambda m: m["counts"]["images"].update(live="three"), "counts.images"),
        (lambda m: m["next_ids"].update(images=-1), "next_ids"),
        (lambda m: m.update(generation=None), "generation"),
        (lambda m: m["collections"]["images"]["segments"][0].update(first_id=1.5), "first_id"),
    ],
)
def test_a_malformed_manifest_is_refused_in_one_line(
    tmp_path: Path,
    photos_index: SearchIndex,
    edit,
    message: str,  # noqa: ANN001
) -> None:
    _edit_manifest(tmp_path / "index", edit)
    with pytest.raises(CheckpointError, match=message) as caught:
        SearchIndex.load(tmp_path / "index")
    assert "\n" not in str(caught.value)


class MemoryBackend(FaissBackend):
    """A stand-in third backend: the FAISS one under another name (all a new backend module needs)."""

    name = "memory"


def test_a_new_backend_is_one_registry_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: AladinModel
) -> None:
    monkeypatch.setitem(BACKEND_MODULES, "memory", f"{__name__}:MemoryBackend")
    write_images(tmp_path / "photos", 3)
    index = build_index(
        tmp_path / "photos", model, tmp_path / "index", IndexConfig(backend="memory"), progress=False
    )
    loaded = SearchIndex.load(tmp_path / "index", model)
    assert isinstance(loaded.collection(IMAGES).vectors, MemoryBackend)
    assert loaded.info()["collections"][IMAGES]["vectors"]["backend"] == "memory"
    assert len(loaded) == len(index) == 3


def test_a_faiss_index_never_imports_pymilvus() -> None:
    legacy = Path(__file__).resolve().parents[1] / "fixtures" / "legacy" / "index" / "index"
    code = (
        "import sys\n"
        "from aladin.index import SearchIndex\n"
        "import aladin.cli.index_commands, aladin.search.searcher\n"
        f"SearchIndex.load({str(legacy)!r}).info()\n"
        "assert not [m for m in sys.modules if 'milvus' in m], sorted(m for m in sys.modules if 'milvus' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_query_longer_than_the_text_encoder_reads_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_model(text_feature_dim=384)  # the real MiniLM tokenizer, which cuts at max_length
    model.save_pretrained(tmp_path / "model")
    write_images(tmp_path / "photos", 2)
    index = build_index(tmp_path / "photos", model, tmp_path / "index", progress=False)
    searcher = Searcher(index, model)
    limit = model.config.text_encoder.max_length
    assert searcher.truncation("a red circle") is None
    long = " ".join(["dog"] * limit)  # + [CLS] and [SEP]: two tokens too many
    assert searcher.truncation(long) == 2
    with pytest.warns(QueryTruncatedWarning, match=f"reads {limit} tokens, the last 2 are ignored"):
        searcher.search_text(long, k=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", QueryTruncatedWarning)
        searcher.search_text("a red circle", k=1)
    capsys.readouterr()
    assert main(["search", long, "--index", str(tmp_path / "index"), "--model", str(tmp_path / "model")]) == 0
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if "warning" in line] == [
        f"aladin: warning: query too long: the text encoder reads {limit} tokens, the last 2 are ignored"
    ]
    assert long not in captured.out  # the table's title shows the start of a long query only


def test_the_milvus_preflight_runs_before_any_encoding_from_python(
    tmp_path: Path, photos_index: SearchIndex, model: AladinModel
) -> None:
    import socket

    pytest.importorskip("pymilvus")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = IndexConfig(backend="milvus", uri=f"http://127.0.0.1:{port}")
    with pytest.raises(AladinError, match="cannot connect"):
        build_index(tmp_path / "photos", model, tmp_path / "other", cfg, progress=False)
    assert not (tmp_path / "other" / ".building").exists()  # nothing was encoded
