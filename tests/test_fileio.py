"""The one atomic write: what it leaves on disk, with which permissions, and what a failure leaves."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from aladin.checkpoint import save_checkpoint
from aladin.fileio import atomic_directory, atomic_write, write_json
from aladin.index.manifest import publish_with


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_the_users_umask_not_0600(tmp_path: Path, umask_022: None) -> None:
    write_json(tmp_path / "a.json", {"x": 1})
    publish_with(tmp_path / "vectors.000001.faiss", lambda tmp: tmp.write_bytes(b"abc"))
    save_checkpoint(tmp_path / "ckpt", "aladin", {"a": 1}, {"w": torch.zeros(2)})
    assert _mode(tmp_path / "a.json") == 0o644
    assert _mode(tmp_path / "vectors.000001.faiss") == 0o644
    assert _mode(tmp_path / "ckpt") == 0o755
    assert _mode(tmp_path / "ckpt" / "model.safetensors") == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    target.write_text("old")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]


def test_a_failed_directory_write_keeps_the_old_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    with atomic_directory(folder) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_directory(folder) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("crash")
    assert (folder / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
