"""`aladin explain` and `aladin serve` end to end: a small model over the real (bundled, offline) MiniLM."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from index_fixtures import indexed_workspace, tiny_model, write_dataset
from PIL import Image

from aladin.cli.main import main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("serve-cli")
    return indexed_workspace(root, tiny_model(text_feature_dim=384))


def test_explain_writes_a_heatmap(
    workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "heat.png"
    argv = ["explain", "a red circle", str(workspace["image"]), "--model", str(workspace["model"])]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "red" in printed and "circle" in printed and f"heatmap written to {out}" in printed
    assert Image.open(out).format == "PNG"

    # the model recorded by an index, one word only
    one = tmp_path / "one.png"
    argv = ["explain", "a red circle", str(workspace["image"]), "--index", str(workspace["index"])]
    assert main([*argv, "--word", "red", "--out", str(one)]) == 0
    assert Image.open(one).width < Image.open(out).width


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--word", "dog"], "'dog' is not among the text's words"),
        (["--image-missing"], "file not found"),
        (["--missing-model"], "checkpoint folder not found"),
    ],
)
def test_explain_errors_are_one_line(
    workspace: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    image = tmp_path / "missing.png" if extra == ["--image-missing"] else workspace["image"]
    missing = extra == ["--missing-model"]
    model = ["--model", str(tmp_path / "no-such-model" if missing else workspace["model"])]
    words = extra if extra[0] == "--word" else []
    code = main(["explain", "a red circle", str(image), *model, *words, "--out", str(tmp_path / "x.png")])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (the text encoder may log above it)
    assert code == 2 and last.startswith("aladin: error: ") and message in last
    assert not (tmp_path / "x.png").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_answers_on_loopback(workspace: dict[str, Path]) -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "aladin",
        "serve",
        "--index",
        str(workspace["index"]),
        "--port",
        str(port),
        "--allowed-hosts",
        "photos.lan",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=1) as response:
                    assert json.load(response) == {"status": "ok"}
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "server did not start in 60 s"
                time.sleep(0.2)
        with urllib.request.urlopen(f"{base}/api/search?q=red+circle&k=3", timeout=30) as response:
            assert len(json.load(response)["hits"]) == 3
        for host, status in [("photos.lan", 200), ("rebound.example", 400)]:
            request = urllib.request.Request(f"{base}/health", headers={"Host": host})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert response.status == status
            except urllib.error.HTTPError as exc:
                assert exc.code == status, host
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    assert f"on http://127.0.0.1:{port}" in output and "warning" not in output


def test_serve_bad_or_taken_port_is_one_line_before_anything_loads(
    workspace: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    serve = ["serve", "--index", str(workspace["index"])]
    assert main([*serve, "--port", "70000"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == ["aladin: error: --port 70000: a port is a number from 0 to 65535"] and not out

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main([*serve, "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"aladin: error: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert "serving" not in out  # no banner for a server that never listened


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("8.8.8.8", False),
    ],
)
def test_only_non_local_addresses_are_warned_about(address: str, local: bool) -> None:
    from aladin.cli.serve_commands import is_local

    assert is_local(address) is local


def test_serve_says_how_many_indexed_files_are_missing(workspace: dict[str, Path], tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", 3)
    build = ["index", "build", str(tmp_path / "data"), "--model", str(workspace["model"])]
    assert main([*build, "--out", str(tmp_path / "index")]) == 0
    (tmp_path / "data" / "images" / "img001.png").unlink()
    command = [sys.executable, "-m", "aladin", "serve", "--index", str(tmp_path / "index"), "--port", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert server.stdout is not None
        for line in server.stdout:  # the warning comes before the banner, which comes once the index is open
            lines.append(line)
            if line.startswith("serving "):
                break
    finally:
        server.terminate()
        server.communicate(timeout=10)
    output = "".join(lines)
    assert "aladin: warning: 1 of 3 indexed files are missing under" in output, output
    assert lines[-1].startswith("serving 3 images"), output
