"""Load benchmark of `aladin serve`, batching off and on: concurrent clients on loopback against a real server.

It builds a small index itself (synthetic scenes, a randomly initialised model on the real encoders:
EfficientNet-Lite0 regions and MiniLM words, so each query costs what a real one does minus the training),
then, in one run, starts `python -m aladin serve` on a free loopback port twice on that index: with batching
off (--max-batch 1) and with the service's default batching. Against each it runs text searches (k=10,
re-rank top 100) for a bounded time at 1, 8, 32 and 128 clients; 128 is 4× the queue size (the surplus must
get 503 quickly, no request may hang), then checks that the server serves normally afterwards. Each client
sends its next request as soon as the last one answers (after a 503 it waits --backoff seconds first, as a
client honouring Retry-After would, only shorter). The targets of issue #26 are checked on the ratios of the
two servers in the same run (absolute numbers move with whatever else the machine runs).

    .venv/bin/python benchmarks/load.py [--seconds 8 --queue-size 32 --images 64]

Writes benchmarks/results/load.json and load.md. With --sweep it instead starts one server per batching setting
(--max-batch 8/16/32 × --max-wait-ms 1/2/5, --repeats rounds) and runs 32 clients against each: the service's defaults
(`ServiceConfig.max_batch`, `max_wait_ms`) are the setting it chooses (load_sweep.json and load_sweep.md).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/search.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
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
from aladin.service.config import ServiceConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TIMEOUT_S = 10.0  # a request still unanswered after this counts as hung (an error)
CLIENTS = (1, 8, 32, 128)
SWEEP_CLIENTS = 32
SWEEP_BATCHES = (8, 16, 32)  # 32 clients never have more than 32 searches queued
SWEEP_WAITS = (1.0, 2.0, 5.0)
SWEEP_TIE = 0.05  # throughputs this close count as tied (see sweep)
FAST_503_MS = 100.0  # a refusal slower than this at p95 is not "at once"


@dataclass
class Run:
    """What one load phase saw: latencies of answered and of refused requests, and every other outcome."""

    name: str
    clients: int
    mode: str = ""
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
            "mode": self.mode,
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


def start_server(
    index: Path, port: int, flags: list[str], log: Path, deadline_s: float = 120
) -> subprocess.Popen:
    """`aladin serve` as its own process; returns once /health answers (within `deadline_s`)."""
    command = [sys.executable, "-m", "aladin", "serve", "--index", str(index), "--port", str(port), *flags]
    with log.open("w") as out:  # the child keeps its own copy of the file descriptor
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + deadline_s
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


def stop_server(server: subprocess.Popen, timeout_s: float) -> None:
    """Ask the server to stop; kill it if it has not within `timeout_s`, so that no benchmark leaves one behind."""
    server.terminate()
    try:
        server.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


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


def targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue #26's targets, on the ratios of batching on to off in this run."""
    row = {(r["mode"], r["clients"]): r for r in runs}
    off32, on32, off1, on1 = row["off", 32], row["on", 32], row["off", 1], row["on", 1]
    speedup = on32["throughput_ok_per_s"] / max(off32["throughput_ok_per_s"], 1e-9)
    p95 = on32["latency_ms"]["p95"] / off32["latency_ms"]["p95"]
    p50 = on1["latency_ms"]["p50"] / off1["latency_ms"]["p50"]
    errors = sum(r["errors"] for r in runs)
    overload = row["on", max(CLIENTS)]  # the default server; the unbatched one's 503s are in the table
    slowest_503 = (overload["rejected_latency_ms"] or {}).get("p95", float("inf"))
    return [
        {"target": "32 clients: throughput on / off ≥ 4", "value": round(speedup, 2), "met": speedup >= 4},
        {"target": "32 clients: p95 on / off ≤ 0.5", "value": round(p95, 2), "met": p95 <= 0.5},
        {"target": "1 client: p50 on / off ≤ 1.1", "value": round(p50, 2), "met": p50 <= 1.1},
        {"target": "errors (all runs) = 0", "value": errors, "met": errors == 0},
        {
            "target": f"overload (batching on): surplus refused with 503, p95 ≤ {FAST_503_MS:.0f} ms",
            "value": slowest_503,
            "met": overload["rejected_503"] > 0 and slowest_503 <= FAST_503_MS,
        },
    ]


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        "# Load benchmark: `aladin serve`, batching off and on",
        "",
        f"{env['images']} images + {env['captions']} captions, random model on the real encoders "
        f"(EfficientNet-Lite0, MiniLM), text search k=10 re-ranking the top 100; queue size {env['queue_size']}; "
        f"batching off = --max-batch 1, on = --max-batch {env['max_batch']} --max-wait-ms {env['max_wait_ms']} "
        f"(the service defaults); {env['seconds']} s per run; {env['cpus']} CPUs ({env['machine']}), clients and "
        f"server on the same machine over loopback (both servers in one run, one after the other); client "
        f"timeout {TIMEOUT_S:.0f} s (an unanswered request is an error). {max(CLIENTS)} clients is 4× the queue: "
        "the overload case. Mean batch: requests the server answered per model call during the run.",
        "",
        "| batching | clients | requests | ok | 503 | errors | ok/s | p50 ms | p95 ms | max ms | 503 p50 ms "
        "| 503 p95 ms | mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in [*results["runs"], *results["after_overload"]]:
        ok = run["latency_ms"] or {}
        rejected = run["rejected_latency_ms"] or {}
        lines.append(
            f"| {run['name']} | {run['clients']} | {run['requests']} | {run['ok']} | {run['rejected_503']} | "
            f"{run['errors']} | {run['throughput_ok_per_s']} | {ok.get('p50', '')} | {ok.get('p95', '')} | "
            f"{ok.get('max', '')} | {rejected.get('p50', '')} | {rejected.get('p95', '')} | "
            f"{run.get('mean_batch', '')} |"
        )
    lines += ["", "| target | value | met |", "|---|---:|---|"]
    lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'NO'} |" for t in results["targets"]]
    pending = ", ".join(f"{mode}: {n}" for mode, n in results["pending_after"].items())
    lines += ["", f"After the overload run the servers' queues held ({pending}) requests."]
    return "\n".join(lines) + "\n"


def sweep_markdown(results: dict[str, Any]) -> str:
    env, chosen = results["environment"], results["chosen"]
    lines = [
        "# Load benchmark: the batching settings",
        "",
        f"{env['images']} images + {env['captions']} captions, as in load.md; one server per setting and round, "
        f"{SWEEP_CLIENTS} clients for {env['seconds']} s each, {env['repeats']} rounds through every setting in "
        f"turn (ok/s and p95: their mean); {env['cpus']} CPUs ({env['machine']}). Chosen: the best throughput, "
        f"the lowest p95 among those within {SWEEP_TIE:.0%} of it.",
        "",
        "| max batch | max wait ms | ok | 503 | errors | ok/s | ok/s per round | p95 ms | mean batch |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in results["runs"]:
        rounds = " / ".join(str(value) for value in row["rounds_ok_per_s"])
        lines.append(
            f"| {row['max_batch']} | {row['max_wait_ms']} | {row['ok']} | {row['rejected_503']} | {row['errors']} "
            f"| {row['throughput_ok_per_s']} | {rounds} | {_cell(row['p95_ms'])} | {_cell(row['mean_batch'])} |"
        )
    lines += ["", f"Chosen: --max-batch {chosen['max_batch']} --max-wait-ms {chosen['max_wait_ms']}."]
    return "\n".join(lines) + "\n"


def queue_stats(port: int) -> dict[str, int]:
    return httpx.get(f"http://127.0.0.1:{port}/stats", timeout=TIMEOUT_S).json()["queue"]


@contextmanager
def serving(index: Path, flags: list[str], args: argparse.Namespace, log: Path) -> Iterator[int]:
    """A warmed-up server on a free port with `flags` and the benchmark's queue size; yields its port. The first
    search loads the text encoder (seconds, more on a busy machine): it is awaited without the clients' timeout,
    which would leave it queued, and counted, during the first measured run."""
    port = free_port()
    server = start_server(index, port, ["--queue-size", str(args.queue_size), *flags], log)
    try:
        first = httpx.get(f"http://127.0.0.1:{port}/api/search", params={"q": args.captions[0]}, timeout=300)
        first.raise_for_status()
        asyncio.run(load("127.0.0.1", port, args.captions, Run("warm-up", 1), 3, args.backoff))
        yield port
    finally:
        stop_server(server, timeout_s=30)


def measure(port: int, mode: str, clients: int, seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    """One load phase against the server on `port`, with the requests per model call it saw meanwhile."""
    print(f"batching {mode}, {clients} clients for {seconds:.0f} s ...", flush=True)
    before = queue_stats(port)
    run = asyncio.run(load("127.0.0.1", port, args.captions, Run(mode, clients, mode), seconds, args.backoff))
    after = queue_stats(port)
    summary = run.summary()
    calls = after["batches"] - before["batches"]
    summary["mean_batch"] = round((after["completed"] - before["completed"]) / calls, 1) if calls else None
    print(json.dumps(summary), flush=True)
    return summary


def compare(index: Path, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Batching off and on, every client count against each server, then a check that it serves normally."""
    modes = {
        "off": ["--max-batch", "1"],
        "on": ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)],
    }
    runs, after, pending = [], [], {}
    for mode, flags in modes.items():
        with serving(index, flags, args, root / f"server-{mode}.log") as port:
            runs += [measure(port, mode, clients, args.seconds, args) for clients in CLIENTS]
            check = Run(f"{mode}, after overload", 1, mode)
            asyncio.run(load("127.0.0.1", port, args.captions, check, 3, args.backoff))
            after.append(check.summary())
            pending[mode] = queue_stats(port)["pending"]
    return {"runs": runs, "after_overload": after, "pending_after": pending, "targets": targets(runs)}


def sweep(index: Path, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Every (max_batch, max_wait_ms) pair at SWEEP_CLIENTS clients, one server each, `args.repeats` rounds in
    turn (a slow spell of the machine then hits every setting alike); per setting the mean of its rounds. The
    chosen pair has the best throughput, where those within SWEEP_TIE of it count as tied and the lowest p95 of
    them wins (two throughputs a few percent apart are the same here: the machine's other jobs move them more)."""
    settings = list(itertools.product(SWEEP_BATCHES, SWEEP_WAITS))
    seen: dict[tuple[int, float], list[dict[str, Any]]] = {setting: [] for setting in settings}
    for _ in range(args.repeats):
        for max_batch, wait in settings:
            flags = ["--max-batch", str(max_batch), "--max-wait-ms", str(wait)]
            with serving(index, flags, args, root / f"server-{max_batch}-{wait}.log") as port:
                seen[max_batch, wait].append(
                    measure(port, f"{max_batch}/{wait}", SWEEP_CLIENTS, args.seconds, args)
                )
    rows = [
        {
            "max_batch": max_batch,
            "max_wait_ms": wait,
            "ok": sum(run["ok"] for run in runs),
            "rejected_503": sum(run["rejected_503"] for run in runs),
            "errors": sum(run["errors"] for run in runs),
            "throughput_ok_per_s": mean([run["throughput_ok_per_s"] for run in runs]),
            # None (JSON null) when a round answered nothing: no latency to average
            "p95_ms": None
            if any(not run["latency_ms"] for run in runs)
            else mean([run["latency_ms"]["p95"] for run in runs]),
            "mean_batch": None
            if any(run["mean_batch"] is None for run in runs)
            else mean([run["mean_batch"] for run in runs]),
            "rounds_ok_per_s": [run["throughput_ok_per_s"] for run in runs],
        }
        for (max_batch, wait), runs in seen.items()
    ]
    best = max(row["throughput_ok_per_s"] for row in rows)
    tied = [row for row in rows if row["throughput_ok_per_s"] >= (1 - SWEEP_TIE) * best]
    chosen = min(tied, key=lambda row: float("inf") if row["p95_ms"] is None else row["p95_ms"])
    return {"runs": rows, "chosen": {"max_batch": chosen["max_batch"], "max_wait_ms": chosen["max_wait_ms"]}}


def _cell(value: float | None) -> str:
    return "–" if value is None else str(value)


def mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 1)


def main() -> None:
    defaults = ServiceConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--queue-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each run")
    parser.add_argument("--backoff", type=float, default=0.1, help="seconds a client waits after a 503")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch, help="of the batching server")
    parser.add_argument(
        "--max-wait-ms", type=float, default=defaults.max_wait_ms, help="of the batching server"
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help=f"instead: the batching settings at {SWEEP_CLIENTS} clients (load_sweep.json, .md)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the sweep")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="aladin-load-") as tmp:
        root = Path(tmp)
        print(f"building a {args.images}-image index ...", flush=True)
        index, args.captions = build_workspace(root, args.images)  # the queries every client draws from
        measured = sweep(index, args, root) if args.sweep else compare(index, args, root)
    results = {
        "environment": {
            "images": args.images,
            "captions": len(args.captions),
            "queue_size": args.queue_size,
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "seconds": args.seconds,
            "backoff_s": args.backoff,
            "repeats": args.repeats,
            "cpus": os.cpu_count(),
            "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
            "torch": torch.__version__,
        },
        **measured,
    }
    name, report = ("load_sweep", sweep_markdown(results)) if args.sweep else ("load", markdown(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
