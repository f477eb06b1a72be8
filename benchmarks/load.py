"""Load benchmark of `aladin serve`: concurrent clients on loopback against a real server process.

It builds a small index itself (synthetic scenes, a randomly initialised model on the real encoders:
EfficientNet-Lite0 regions and MiniLM words, so each query costs what a real one does minus the training),
starts `python -m aladin serve` on a free loopback port, and runs text searches (k=10, re-rank top 100) for a
bounded time at 1 client, at 32 clients (no errors expected: the queue holds 32) and at 4× the queue size
(the surplus must get 503 quickly, no request may hang), then checks that the server serves normally
afterwards. Each client sends its next request as soon as the last one answers (after a 503 it waits
--backoff seconds first, as a client honouring Retry-After would, only shorter).

    .venv/bin/python benchmarks/load.py [--seconds 15 --queue-size 32 --images 64]

Writes benchmarks/results/load.json and load.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/search.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlencode  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from aladin.config import AladinConfig, ModelConfig  # noqa: E402
from aladin.data.synthetic import SyntheticConfig, generate_synthetic_dataset  # noqa: E402
from aladin.index.builder import build_index  # noqa: E402
from aladin.model.aladin import AladinModel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TIMEOUT_S = 10.0  # a request still unanswered after this counts as hung (an error)


@dataclass
class Run:
    """What one load phase saw: latencies of answered and of refused requests, and every other outcome."""

    name: str
    clients: int
    seconds: float = 0.0
    ok_ms: list[float] = field(default_factory=list)
    rejected_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def record(self, started: float, outcome: str) -> None:
        elapsed = (time.perf_counter() - started) * 1000
        if outcome == "200":
            self.ok_ms.append(elapsed)
        elif outcome == "503":
            self.rejected_ms.append(elapsed)
        else:
            self.errors[outcome] = self.errors.get(outcome, 0) + 1

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "clients": self.clients,
            "seconds": round(self.seconds, 2),
            "requests": len(self.ok_ms) + len(self.rejected_ms) + sum(self.errors.values()),
            "ok": len(self.ok_ms),
            "rejected_503": len(self.rejected_ms),
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
            "throughput_ok_per_s": round(len(self.ok_ms) / self.seconds, 1) if self.seconds else 0.0,
            "latency_ms": percentiles(self.ok_ms),
            "rejected_latency_ms": percentiles(self.rejected_ms),
        }


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50": round(float(p50), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "max": round(max(values), 1),
    }


def build_workspace(root: Path, images: int) -> tuple[Path, list[str]]:
    """A saved random model on the real encoders and an index of `images` synthetic scenes with captions."""
    torch.manual_seed(0)
    model = AladinModel(
        AladinConfig(model=ModelConfig(embed_dim=128, global_dim=128, ff_dim=256, num_heads=4))
    ).eval()
    model.save_pretrained(root / "model")
    data = generate_synthetic_dataset(root / "data", SyntheticConfig(n_train=0, n_val=0, n_test=images))
    build_index(
        root / "data",
        model,
        root / "index",
        with_texts=True,
        split="test",
        progress=False,
        checkpoint=str(root / "model"),
    )
    return root / "index", [caption for item in data.items for caption in item.captions]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index: Path, port: int, queue_size: int, log: Path) -> subprocess.Popen:
    """`aladin serve` as its own process; returns once /health answers."""
    command = [sys.executable, "-m", "aladin", "serve", "--index", str(index), "--port", str(port)]
    command += ["--queue-size", str(queue_size)]
    with log.open("w") as out:  # the child keeps its own copy of the file descriptor
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"server did not start:\n{log.read_text()}")
        time.sleep(0.2)


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol for GET requests: with 128
    clients in one process on 2 cores, a full HTTP client library's own overhead dominated what was measured."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, target: str) -> int:
        """Send one GET and read the whole answer; returns the status code."""
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
        await reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection") == "close":
            self.close()
        return int(head[0].split()[1])

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def load(host: str, port: int, captions: list[str], run: Run, seconds: float, backoff: float) -> Run:
    """`run.clients` clients, each with its own connection, searching in a loop until `seconds` have passed."""

    async def one_client(seed: int) -> None:
        rng = random.Random(seed)
        connection = Connection(host, port)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            target = "/api/search?" + urlencode({"q": rng.choice(captions), "k": 10, "rerank": 100})
            try:
                outcome = str(await asyncio.wait_for(connection.get(target), TIMEOUT_S))
            except TimeoutError:
                outcome = "timeout"
                connection.close()
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                outcome = type(exc).__name__
                connection.close()
            run.record(started, outcome)
            if outcome == "503":
                await asyncio.sleep(backoff)
        connection.close()

    begin = time.perf_counter()
    deadline = begin + seconds
    await asyncio.gather(*(one_client(i) for i in range(run.clients)))
    run.seconds = time.perf_counter() - begin
    return run


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        "# Load benchmark: `aladin serve`",
        "",
        f"{env['images']} images + {env['captions']} captions, random model on the real encoders "
        f"(EfficientNet-Lite0, MiniLM), text search k=10 re-ranking the top 100; queue size {env['queue_size']}; "
        f"{env['seconds']} s per run; {env['cpus']} CPUs ({env['machine']}), clients and server on the same "
        f"machine over loopback; client timeout {TIMEOUT_S:.0f} s (an unanswered request is an error).",
        "",
        "| run | clients | requests | ok | 503 | errors | ok/s | p50 ms | p95 ms | max ms | 503 p50 ms | 503 p95 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in [*results["runs"], results["after_overload"]]:
        ok = run["latency_ms"] or {}
        rejected = run["rejected_latency_ms"] or {}
        lines.append(
            f"| {run['name']} | {run['clients']} | {run['requests']} | {run['ok']} | {run['rejected_503']} | "
            f"{run['errors']} | {run['throughput_ok_per_s']} | {ok.get('p50', '')} | {ok.get('p95', '')} | "
            f"{ok.get('max', '')} | {rejected.get('p50', '')} | {rejected.get('p95', '')} |"
        )
    lines += ["", f"After the overload run the server's queue held {results['pending_after']} requests."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--queue-size", type=int, default=32)
    parser.add_argument("--clients", type=int, default=32, help="clients of the normal run")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each run")
    parser.add_argument("--backoff", type=float, default=0.1, help="seconds a client waits after a 503")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="aladin-load-") as tmp:
        root = Path(tmp)
        print(f"building a {args.images}-image index ...", flush=True)
        index, captions = build_workspace(root, args.images)
        port = free_port()
        server = start_server(index, port, args.queue_size, root / "server.log")
        try:
            asyncio.run(load("127.0.0.1", port, captions, Run("warm-up", 1), 3, args.backoff))
            runs = []
            for name, clients in [
                ("single client", 1),
                (f"{args.clients} clients", args.clients),
                (f"overload: 4 × queue ({4 * args.queue_size} clients)", 4 * args.queue_size),
            ]:
                print(f"{name} for {args.seconds:.0f} s ...", flush=True)
                run = Run(name, clients)
                runs.append(asyncio.run(load("127.0.0.1", port, captions, run, args.seconds, args.backoff)))
                print(json.dumps(runs[-1].summary()), flush=True)
            after = Run("after overload (1 client)", 1)
            asyncio.run(load("127.0.0.1", port, captions, after, 5, args.backoff))
            pending = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=TIMEOUT_S).json()["queue"][
                "pending"
            ]
        finally:
            server.terminate()
            server.wait(timeout=30)
    results = {
        "environment": {
            "images": args.images,
            "captions": len(captions),
            "queue_size": args.queue_size,
            "seconds": args.seconds,
            "backoff_s": args.backoff,
            "cpus": os.cpu_count(),
            "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
            "torch": torch.__version__,
        },
        "runs": [run.summary() for run in runs],
        "after_overload": after.summary(),
        "pending_after": pending,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (args.out / "load.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
