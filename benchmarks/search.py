"""Search benchmark: how fast and how exact two-stage search is, from 10K to 1M images, on this machine.

For each gallery size it builds a real index (the library's writer; the region store int8 by default, as an
index's, memory-mapped from disk) over synthetic data of the real dimensions (256-d global vectors of low intrinsic dimension; 49 regions ×
256 per image) and measures, per FAISS factory (Flat = exact, IVF, HNSW): kNN-only and kNN + re-rank (top 100)
latency after query encoding, end-to-end latency from query text (MiniLM + the model's text side), recall@10 of
the approximate indexes against exact search, brute-force alignment-head scoring of the whole gallery (at 1M
extrapolated from a measured slice), build time, memory and disk per item, and the exact scan's bytes per
second against this machine's memory bandwidth measured in the same run. The IVF and HNSW variants share the
Flat index's region store and metadata (only the FAISS index differs), so the store is written once per size.

With --model and --cache (a feature cache with a test split) it also reports retrieval quality (rsum) of kNN
only vs kNN + re-rank, with float16 and int8 region stores.

    .venv/bin/python benchmarks/search.py --sizes 10000,100000 [--model CKPT --cache DIR]

Writes benchmarks/results/search.json and search.md.

With --backends faiss,milvus it instead compares the vector backends side by side on one gallery per size
(Milvus embedded as Milvus Lite, needs `pip install aladin[milvus]`): for Flat, IVF and HNSW on each backend,
the time to load and index the vectors (read back from a FAISS Flat gallery with `migrate_index`; the region
store is linked, not rewritten), kNN and kNN + re-rank latency, and recall@10 against exact search. Writes
search.milvus.json and search.milvus.md.

    .venv/bin/python benchmarks/search.py --sizes 100000 --backends faiss,milvus
"""

from __future__ import annotations

import os

# Before numpy/torch/faiss load their OpenMP runtimes: threads that spin while waiting (the default) steal the
# cores from the other runtime's threads (torch and faiss each bring one); on this 2-core machine that made
# single queries 10-20× slower. Export OMP_WAIT_POLICY to measure another setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from load import free_port, start_server, stop_server  # noqa: E402

from aladin.config import AladinConfig  # noqa: E402
from aladin.encoders.image import grid_boxes  # noqa: E402
from aladin.evaluate.metrics import recall_from_ranks  # noqa: E402
from aladin.index import IMAGES, TEXTS, EncodedChunk, ImageRecord, IndexConfig, SearchIndex  # noqa: E402
from aladin.index.builder import build_index  # noqa: E402
from aladin.index.migrate import migrate_index  # noqa: E402
from aladin.index.sources import CachedSplitSource  # noqa: E402
from aladin.index.vectors import VectorIndex  # noqa: E402
from aladin.model.aladin import AladinModel  # noqa: E402
from aladin.model.alignment import region_word_scores  # noqa: E402
from aladin.search import EncodedQueries, Searcher  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIM, REGIONS, WORDS = 256, 49, 12
CHUNK = 10_000
RERANK = 100
SERVICE_QUERIES = 200  # text searches sent to the service before its memory is read
BRUTE_SLICE = 100_000  # images scored per brute-force measurement; larger galleries are extrapolated
CAPTION_WORDS = "a man woman dog cat red blue small large on the of with near street table grass ball".split()


# ---- measuring ------------------------------------------------------------------------------------
def latency(fns: dict[str, Callable[[int], Any]], n: int, warmup: int = 3) -> dict[str, dict[str, float]]:
    """p50/p95 (ms) and queries per second of each `fn(i)`, one query at a time. The functions take turns
    query by query, in a rotating order, so a burst of other load on the machine, or the first read of a
    store page from disk, costs them all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(-warmup, n):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            fns[name](i)
            if i >= 0:
                times[name].append(time.perf_counter() - start)
    return {name: {**p50_p95([x * 1e3 for x in t]), "qps": float(n / sum(t))} for name, t in times.items()}


def p50_p95(ms: list[float]) -> dict[str, float]:
    """The median and 95th percentile of latencies in milliseconds."""
    p50, p95 = np.percentile(ms, [50, 95])
    return {"p50_ms": float(p50), "p95_ms": float(p95)}


def memory_bandwidth(gib: float = 2.0) -> dict[str, float]:
    """DRAM read bandwidth now (an array far larger than the L3 cache, summed by torch's vectorised kernel),
    on one thread and on all threads, in GB/s."""
    tensor = torch.ones(int(gib * 2**30) // 4)
    threads = torch.get_num_threads()
    best: dict[str, float] = {}
    for name, count in (("one_thread_read_gbs", 1), ("all_threads_read_gbs", threads)):
        torch.set_num_threads(count)
        tensor.sum()
        best[name] = tensor.numel() * 4 / min(_timed(tensor.sum) for _ in range(3)) / 1e9
    torch.set_num_threads(threads)
    return best


def l3_cache_bytes() -> int:
    """Size of the last-level cache: a Flat index smaller than this is scanned from cache, not DRAM."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return 0
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def recall_at_10(exact: np.ndarray, approx: np.ndarray) -> float:
    return float(np.mean([len(set(e) & set(a)) / len(e) for e, a in zip(exact, approx, strict=True)]))


# ---- synthetic data -------------------------------------------------------------------------------
class Synthetic:
    """Seeded unit vectors of the real dimensions. Global vectors have low intrinsic dimension (clusters in a
    48-d subspace plus noise), as learned embeddings do, so ANN recall is meaningful; region sets are drawn
    from a pool of random unit vectors (what matters for timing is the bytes read, not their values)."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.basis = rng.normal(size=(48, DIM)).astype(np.float32)
        self.centres = rng.normal(size=(256, 48)).astype(np.float32)
        pool = rng.normal(size=(65_536, DIM)).astype(np.float32)
        self.pool = (pool / np.linalg.norm(pool, axis=1, keepdims=True)).astype(np.float16)
        self.boxes = grid_boxes(7, 7).numpy().astype(np.float16)

    def global_vectors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        latent = self.centres[rng.integers(0, len(self.centres), n)] + rng.normal(size=(n, 48)).astype(
            np.float32
        )
        x = latent @ self.basis + 2.0 * rng.normal(size=(n, DIM)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def chunk(self, n: int, rng: np.random.Generator) -> EncodedChunk:
        rows = self.pool[rng.integers(0, len(self.pool), n * REGIONS)]
        return EncodedChunk(
            self.global_vectors(n, rng), rows, np.full(n, REGIONS, np.int64), np.tile(self.boxes, (n, 1))
        )

    def queries(self, n: int, seed: int) -> EncodedQueries:
        rng = np.random.default_rng(seed)
        words = rng.normal(size=(n, WORDS, DIM)).astype(np.float32)
        words /= np.linalg.norm(words, axis=2, keepdims=True)
        return EncodedQueries(
            torch.from_numpy(self.global_vectors(n, rng)),
            torch.from_numpy(words),
            torch.ones(n, WORDS, dtype=torch.bool),
        )


def _one(queries: EncodedQueries, i: int) -> EncodedQueries:
    i %= len(queries)
    return EncodedQueries(queries.global_vectors[i : i + 1], queries.rows[i : i + 1], queries.mask[i : i + 1])


def build_gallery(
    directory: Path, n: int, model: AladinModel, data: Synthetic, dtype: str, seed: int = 1
) -> tuple[SearchIndex, float]:
    """A Flat index of n synthetic images written by the library; returns it and the seconds it took."""
    rng = np.random.default_rng(seed)
    index = SearchIndex.create(directory, model, IndexConfig(region_dtype=dtype))
    start = time.perf_counter()
    with index.update() as up:
        for first in range(0, n, CHUNK):
            chunk = data.chunk(min(CHUNK, n - first), rng)
            names = range(first, first + len(chunk))
            up.add_images(chunk, [ImageRecord(f"synthetic/{i:07d}.jpg", str(i)) for i in names])
    return index, time.perf_counter() - start


def ann_factories(n: int) -> dict[str, IndexConfig]:
    """Approximate indexes sized for n: IVF with ~sqrt(n) lists (nprobe chosen for recall@10 ≥ 0.95), HNSW32
    with the index's default ef_search."""
    nlist = int(2 ** round(np.log2(np.sqrt(n))))
    return {
        "Flat": IndexConfig(),
        f"IVF{nlist},Flat": IndexConfig(factory=f"IVF{nlist},Flat", nprobe=max(8, nlist // 8)),
        "HNSW32": IndexConfig(factory="HNSW32"),
    }


# ---- one gallery size -----------------------------------------------------------------------------
def run_size(
    n: int, model: AladinModel, data: Synthetic, workdir: Path, args: argparse.Namespace, bandwidth: dict
) -> dict[str, Any]:
    print(f"\n== {n:,} images ==", flush=True)
    result: dict[str, Any] = {"images": n}
    directory = workdir / f"gallery-{n}"
    index, seconds = build_gallery(directory, n, model, data, args.region_dtype)
    index.meta.close()
    # Searched as `aladin serve` opens it: checksums verified, which reads every file once and so leaves the
    # region store in the page cache while it fits in memory (the state a running service is in).
    start = time.perf_counter()
    index = SearchIndex.load(directory, model)
    result["load_seconds"] = time.perf_counter() - start
    info = index.info()
    files = index.manifest["files"]
    segment = index.manifest["collections"][IMAGES]["segments"][0]
    store_bytes = files[segment["data"]]["bytes"] + files[segment["offsets"]]["bytes"]
    result["store_write_seconds"] = seconds
    result["disk_bytes_per_item"] = {
        "region_store": store_bytes / n,
        "faiss_flat": files[index.manifest["collections"][IMAGES]["vectors"]]["bytes"] / n,
        "metadata_sqlite": files[index.manifest["meta"]]["bytes"] / n,
        "total": info["total_bytes"] / n,
    }
    print(
        f"wrote the index in {seconds:.1f} s ({info['total_bytes'] / 2**30:.2f} GiB), "
        f"loaded it in {result['load_seconds']:.1f} s",
        flush=True,
    )

    searcher = Searcher(index, model, pair_batch=RERANK)
    queries = data.queries(args.queries, seed=7)
    query_vectors = queries.global_vectors.numpy()
    flat = index.collection(IMAGES).vectors.index  # type: ignore[attr-defined]
    _, exact = flat.search(query_vectors, 10)
    result["factories"] = {}
    searchers, folders = {}, {}
    for number, (name, cfg) in enumerate(ann_factories(n).items()):
        entry: dict[str, Any] = {
            "settings": {"nprobe": cfg.nprobe}
            if cfg.nlist
            else {"ef_search": cfg.ef_search}
            if cfg.hnsw_m
            else {}
        }
        if name == "Flat":
            variant, entry["build_seconds"] = index, None
        else:  # the same store and metadata (hard-linked), this FAISS index: a real index folder to serve
            start = time.perf_counter()
            variant = migrate_index(directory, workdir / f"{number}-{n}", "faiss", factory=cfg.factory)
            entry["build_seconds"] = time.perf_counter() - start
            variant.set_search_params(cfg.nprobe, cfg.ef_search)
        folders[name] = variant.directory
        vectors_index = variant.collection(IMAGES).vectors.index  # type: ignore[attr-defined]
        entry["memory_bytes_per_item"] = len(faiss_bytes(vectors_index)) / n
        _, found = vectors_index.search(query_vectors, 10)
        entry["recall_at_10"] = recall_at_10(exact, found)
        searchers[name] = Searcher(variant, model, searcher.text_encoder, pair_batch=RERANK)
        result["factories"][name] = entry
    texts = caption_queries(args.e2e_queries)
    stages = {
        "knn_only": (lambda s: lambda i: s.search_encoded(IMAGES, _one(queries, i), 10, 0), args.queries),
        "knn_rerank": (
            lambda s: lambda i: s.search_encoded(IMAGES, _one(queries, i), 10, RERANK),
            args.queries,
        ),
        "end_to_end": (
            lambda s: lambda i: s.search_text(texts[i % len(texts)], 10, RERANK),
            args.e2e_queries,
        ),
    }
    for stage, (make, count) in stages.items():
        for name, stats in latency({name: make(s) for name, s in searchers.items()}, count).items():
            result["factories"][name][stage] = stats
    for name, entry in result["factories"].items():
        print(
            f"{name:>12}: recall@10 {entry['recall_at_10']:.3f}  kNN p95 {entry['knn_only']['p95_ms']:.2f} ms  "
            f"+re-rank p95 {entry['knn_rerank']['p95_ms']:.2f} ms  end-to-end p95 {entry['end_to_end']['p95_ms']:.1f} ms"
            + (f"  built in {entry['build_seconds']:.1f} s" if entry["build_seconds"] else ""),
            flush=True,
        )
    served = "HNSW32" if n >= 100_000 else "Flat"
    result["served_alone"] = {
        "index": served,
        **served_alone(searchers[served], queries, args.queries),
    }
    for variant_searcher in searchers.values():
        if variant_searcher.index is not index:
            variant_searcher.index.meta.close()
    searchers.clear()  # frees the IVF/HNSW indexes in this process before the service loads its own
    del variant, vectors_index
    if not args.skip_service:
        result["service"] = {
            "index": served,
            **service_memory(folders[served], args.model_dir, workdir),
        }

    result["exact_scan"] = exact_scan(flat, query_vectors, n, args.queries, bandwidth)
    result["brute_force"] = brute_force(searcher, queries, n, args.brute_queries)
    for entry in result["factories"].values():
        entry["speedup_vs_brute_force"] = result["brute_force"]["seconds_per_query"] / (
            entry["knn_rerank"]["p50_ms"] / 1e3
        )
    print(
        f"brute force: {result['brute_force']['seconds_per_query']:.2f} s/query"
        + (" (extrapolated)" if result["brute_force"]["extrapolated"] else "")
        + f"; exact scan {result['exact_scan']['default_threads']['gbs']:.1f} GB/s "
        + f"({result['exact_scan']['one_thread']['gbs']:.1f} GB/s on one thread)",
        flush=True,
    )
    if not args.skip_int8 and args.region_dtype == "float16" and n <= 100_000:
        result["int8"] = compare_int8(workdir / f"int8-{n}", n, model, data, searcher, queries, store_bytes)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    index.meta.close()
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
    return result


def served_alone(searcher: Searcher, queries: EncodedQueries, count: int) -> dict[str, dict[str, float]]:
    """The served index by itself, as a service runs it (in the rotation above, another index's scan between
    two of its queries evicts the caches it relies on): whole searches, and each stage of one: text encoding,
    kNN, reading the short list's regions from the store (gather + decode), the alignment head over them."""
    index = searcher.index
    texts = caption_queries(count + 3)  # a different text for each call, warm-up included
    _, short_lists = index.search(IMAGES, queries.global_vectors.numpy(), RERANK)
    aggregation = searcher.model.config.model.word_aggregation
    head_ms: list[float] = []

    def lookup_then_head(i: int) -> None:
        regions, mask = index.lookup(IMAGES, short_lists[i % len(short_lists)])
        query = _one(queries, i)
        start = time.perf_counter()
        with torch.inference_mode():
            # one query's short list: Searcher._align's dense path, all candidates × the query in one product
            region_word_scores(regions, mask, query.rows, query.mask, aggregation)
        head_ms.append((time.perf_counter() - start) * 1e3)

    fns = {
        "text encoding": lambda i: searcher.encode_texts([texts[i % len(texts)]]),
        "kNN": lambda i: searcher.search_encoded(IMAGES, _one(queries, i), 10, 0),
        "region lookup + alignment head": lookup_then_head,
        "kNN + re-rank": lambda i: searcher.search_encoded(IMAGES, _one(queries, i), 10, RERANK),
        "end to end": lambda i: searcher.search_text(texts[i % len(texts)], 10, RERANK),
    }
    stats = latency(fns, count)
    stats["alignment head"] = p50_p95(head_ms[-count:])  # without the warm-up calls
    return stats


def service_memory(folder: Path, model_dir: str, workdir: Path) -> dict[str, Any]:
    """`aladin serve` on `folder` as an operator starts it (its defaults): seconds until it answers, latency of
    SERVICE_QUERIES different text searches (re-ranking the top RERANK) sent one at a time over HTTP, and its
    resident memory after them. A server that fails is reported, not fatal: the other results are kept."""
    port = free_port()
    start = time.perf_counter()
    try:
        server = start_server(folder, port, ["--model", model_dir], workdir / "serve.log", deadline_s=1800)
    except SystemExit as exc:
        return {"error": str(exc)}
    out: dict[str, Any] = {"start_seconds": time.perf_counter() - start, "searches": SERVICE_QUERIES}
    try:
        url = f"http://127.0.0.1:{port}/api/search"
        times = []
        texts = caption_queries(SERVICE_QUERIES + 3)
        for i in range(-3, SERVICE_QUERIES):  # the first searches load the text encoder
            began = time.perf_counter()
            httpx.get(url, params={"q": texts[i], "k": 10, "rerank": RERANK}, timeout=300).raise_for_status()
            if i >= 0:
                times.append((time.perf_counter() - began) * 1e3)
        status = proc_status_kib(server.pid)
        store_kib = mapped_rss_kib(server.pid, folder)
    except (httpx.HTTPError, OSError) as exc:
        return {**out, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        stop_server(server, timeout_s=60)
    http = p50_p95(times)
    out["http_p50_ms"], out["http_p95_ms"] = http["p50_ms"], http["p95_ms"]
    out["rss_gib"], out["peak_rss_gib"] = status["VmRSS"] / 2**20, status["VmHWM"] / 2**20
    out["rss_anon_gib"] = status["RssAnon"] / 2**20  # its own memory: FAISS index, model, Python
    out["rss_index_files_gib"] = store_kib / 2**20  # pages of the index folder's files it has mapped
    out["rss_other_files_gib"] = (status["RssFile"] - store_kib) / 2**20  # shared libraries, model weights
    return out


def proc_status_kib(pid: int) -> dict[str, int]:
    """The kB-valued lines of /proc/<pid>/status (VmRSS, RssAnon, RssFile, VmHWM, ...)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            fields[name] = int(value.split()[0])
    return fields


def mapped_rss_kib(pid: int, folder: Path) -> int:
    """Resident kB of the process's mappings of files inside `folder` (from /proc/<pid>/smaps)."""
    inside, total = False, 0
    prefix = str(folder.resolve()) + os.sep
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            inside = len(head) == 6 and head[5].startswith(prefix)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def exact_scan(
    flat: VectorIndex, queries: np.ndarray, n: int, count: int, bandwidth: dict[str, float]
) -> dict[str, Any]:
    """Bytes per second of the single-query Flat scan, with FAISS's default threads and with one thread."""
    import faiss

    scanned = n * DIM * 4
    out: dict[str, Any] = {"bytes_per_query": scanned, "fits_in_l3_cache": scanned < l3_cache_bytes()}
    default_threads = faiss.omp_get_max_threads()
    for label, threads, reference in (
        ("default_threads", default_threads, "all_threads_read_gbs"),
        ("one_thread", 1, "one_thread_read_gbs"),
    ):
        faiss.omp_set_num_threads(threads)
        stats = latency({"scan": lambda i: flat.search(queries[i % len(queries)][None], 10)}, count)["scan"]
        gbs = scanned / (stats["p50_ms"] / 1e3) / 1e9
        out[label] = {
            **stats,
            "threads": threads,
            "gbs": gbs,
            "share_of_bandwidth": gbs / bandwidth[reference],
        }
    faiss.omp_set_num_threads(default_threads)
    return out


def faiss_bytes(vectors: VectorIndex) -> np.ndarray:
    import faiss

    return faiss.serialize_index(vectors.cpu)


def caption_queries(n: int) -> list[str]:
    rng = np.random.default_rng(3)
    return [" ".join(rng.choice(CAPTION_WORDS, size=rng.integers(5, 11))) for _ in range(n)]


def brute_force(searcher: Searcher, queries: EncodedQueries, n: int, count: int) -> dict[str, Any]:
    """The alignment head over every image for `count` queries; beyond BRUTE_SLICE images, timed on a slice."""
    ids = np.arange(min(n, BRUTE_SLICE))
    searcher.exhaustive_encoded(_one(queries, 0), 10, ids[:2048])  # warm-up
    start = time.perf_counter()
    for i in range(count):
        searcher.exhaustive_encoded(_one(queries, i), 10, ids)
    seconds = (time.perf_counter() - start) / count * (n / len(ids))
    return {
        "seconds_per_query": seconds,
        "queries": count,
        "measured_images": len(ids),
        "extrapolated": n > len(ids),
    }


def compare_int8(
    directory: Path,
    n: int,
    model: AladinModel,
    data: Synthetic,
    fp16_searcher: Searcher,
    queries: EncodedQueries,
    fp16_store_bytes: int,
) -> dict[str, Any]:
    """The same gallery with an int8 store: size against float32, reconstruction error, re-rank agreement."""
    index, seconds = build_gallery(directory, n, model, data, "int8")
    segment = index.manifest["collections"][IMAGES]["segments"][0]
    files = index.manifest["files"]
    rows_bytes = files[segment["data"]]["bytes"]
    store_bytes = rows_bytes + files[segment["offsets"]]["bytes"]
    float32_bytes = segment["rows"] * DIM * 4
    searcher = Searcher(index, model, pair_batch=RERANK)
    agree = []
    for i in range(min(50, len(queries))):
        a = {h.id for h in fp16_searcher.search_encoded(IMAGES, _one(queries, i), 10, RERANK)[0]}
        b = {h.id for h in searcher.search_encoded(IMAGES, _one(queries, i), 10, RERANK)[0]}
        agree.append(len(a & b) / 10)
    index.meta.close()
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "write_seconds": seconds,
        "store_bytes_per_item": store_bytes / n,
        "rows_vs_float32": rows_bytes / float32_bytes,
        "store_vs_float32": store_bytes / float32_bytes,
        "float16_store_vs_float32": fp16_store_bytes / float32_bytes,
        "reconstruction": segment["reconstruction"],
        "top10_agreement_with_float16_after_rerank": float(np.mean(agree)),
    }


# ---- vector backends side by side ------------------------------------------------------------------
def compare_backends(
    n: int, backends: list[str], model: AladinModel, data: Synthetic, workdir: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Every backend × factory over the same gallery and queries: build seconds, latency, recall@10."""
    print(f"\n== {n:,} images: backends {', '.join(backends)} ==", flush=True)
    gallery, seconds = build_gallery(workdir / f"gallery-{n}", n, model, data, args.region_dtype)
    queries = data.queries(args.queries, seed=7)
    _, exact = gallery.search(IMAGES, queries.global_vectors.numpy(), 10)
    result: dict[str, Any] = {"images": n, "store_write_seconds": seconds, "runs": {}}
    searchers = {}
    for backend in backends:
        for number, (name, cfg) in enumerate(ann_factories(n).items()):
            label = f"{backend} {name}"
            start = time.perf_counter()
            index = migrate_index(
                gallery.directory, workdir / f"{backend}-{number}-{n}", backend, factory=name
            )
            build = time.perf_counter() - start
            index.set_search_params(cfg.nprobe, cfg.ef_search)
            _, found = index.search(IMAGES, queries.global_vectors.numpy(), 10)
            settings = (
                {"nprobe": cfg.nprobe} if cfg.nlist else {"ef_search": cfg.ef_search} if cfg.hnsw_m else {}
            )
            result["runs"][label] = {
                "backend": backend,
                "factory": name,
                "settings": settings,
                "build_seconds": build,
                "recall_at_10": recall_at_10(exact, found),
            }
            searchers[label] = Searcher(index, model, pair_batch=RERANK)
            print(
                f"{label}: built in {build:.1f} s, recall@10 {result['runs'][label]['recall_at_10']:.3f}",
                flush=True,
            )
    for stage, depth in (("knn_only", 0), ("knn_rerank", RERANK)):
        fns = {label: _searching(s, queries, depth) for label, s in searchers.items()}
        for label, stats in latency(fns, args.queries).items():
            result["runs"][label][stage] = stats
    for label, run in result["runs"].items():
        print(
            f"{label:>24}: kNN p50 {run['knn_only']['p50_ms']:.2f} ms, +re-rank p50 {run['knn_rerank']['p50_ms']:.2f} ms",
            flush=True,
        )
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def _searching(searcher: Searcher, queries: EncodedQueries, depth: int) -> Callable[[int], Any]:
    """Query i of `queries` through both stages (re-ranking the top `depth`; 0 = kNN only)."""
    return lambda i: searcher.search_encoded(IMAGES, _one(queries, i), 10, depth)


def backends_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Search benchmark: vector backends",
        "",
        f"Machine: {m['cpus']} CPUs, load average {m['load_average_at_start']} at start and "
        f"{m.get('load_average_at_end')} at end (other jobs share the machine). Milvus = Milvus Lite "
        f"{results['versions'].get('milvus-lite')} embedded in the process (pymilvus {results['versions'].get('pymilvus')}), "
        f"FAISS {results['versions'].get('faiss')} in-process. Synthetic galleries: 256-d global vectors, 49 regions × 256 "
        f"per image ({results['region_dtype']} store, local, memory-mapped, shared by both backends). Latencies: one "
        f"query at a time from encoded queries, k=10, re-rank top {RERANK}; recall@10 against exact (FAISS Flat) search.",
        "",
        "| images | backend | index | recall@10 | kNN p50 / p95 ms | kNN+re-rank p50 / p95 ms | kNN q/s | build s |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["sizes"]:
        for run in r["runs"].values():
            settings = " ".join(f"{k}={v}" for k, v in run["settings"].items())
            lines.append(
                f"| {r['images']:,} | {run['backend']} | {run['factory']} {settings} | {run['recall_at_10']:.3f} | "
                f"{run['knn_only']['p50_ms']:.2f} / {run['knn_only']['p95_ms']:.2f} | "
                f"{run['knn_rerank']['p50_ms']:.2f} / {run['knn_rerank']['p95_ms']:.2f} | "
                f"{run['knn_only']['qps']:.0f} | {run['build_seconds']:.1f} |"
            )
    lines += ["", *[f"- {note}" for note in results["notes"]]]
    return "\n".join(lines) + "\n"


def run_backends(
    sizes: list[int], backends: list[str], model: AladinModel, workdir: Path, args: argparse.Namespace
) -> int:
    """The --backends comparison; writes search.milvus.json and .md."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("pymilvus", "milvus-lite", "faiss-cpu"):
        try:
            versions[package.removesuffix("-cpu")] = version(package)
        except PackageNotFoundError:
            versions[package.removesuffix("-cpu")] = "not installed"
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "versions": versions,
        "region_dtype": args.region_dtype,
        "backends": backends,
        "sizes": [],
        "notes": [
            "build s = reading the vectors back from a FAISS Flat gallery and loading + indexing them in the backend "
            "(`migrate_index`; the region store and metadata are hard-linked). For Milvus: insert in batches of "
            "5,000, flush (sealed, indexed segments), load.",
            "Milvus latency includes the gRPC round trip to the embedded Lite server (threads in this process); "
            "a Milvus server adds the network, a cluster spreads the scan over query nodes.",
            "Re-ranking reads the candidates' regions from the local store with either backend.",
        ],
    }
    started = time.perf_counter()
    for n in sizes:
        results["sizes"].append(compare_backends(n, backends, model, Synthetic(), workdir, args))
    return finish(results, started, Path(args.out), "search.milvus", backends_markdown)


# ---- retrieval quality on a real test split --------------------------------------------------------
def retrieval_quality(
    model: AladinModel,
    cache: Path,
    workdir: Path,
    rerank: int,
    stores: dict[str, IndexConfig] | None = None,
) -> dict[str, Any]:
    """rsum of kNN only (on the first store: kNN does not read it) and kNN + re-rank on the cache's test split,
    with each of `stores` (name → index settings; default float16, int8 and PQ region stores)."""
    if stores is None:
        stores = {
            dtype: IndexConfig(region_dtype=dtype, batch_size=256) for dtype in ("float16", "int8", "pq")
        }
    source = CachedSplitSource(cache, "test", model.config)
    cached = source.cached
    owners = np.asarray(cached.caption_image)
    out: dict[str, Any] = {"images": cached.num_images, "captions": cached.num_captions, "rerank": rerank}
    for position, (name, cfg) in enumerate(stores.items()):
        index = build_index(source, model, workdir / f"quality-{name}", cfg, with_texts=True, progress=False)
        out[f"{name} store"] = index.info()  # sizes and reconstruction error per segment
        print(f"{name} store: {json.dumps(index.info(), default=str)[:600]}", flush=True)
        searcher = Searcher(index, model)
        for depth in (0, rerank) if position == 0 else (rerank,):
            label = "kNN only" if depth == 0 else f"kNN + re-rank {depth} ({name} store)"
            t2i = ranks(searcher, TEXTS, cached, owners, depth)
            i2t = ranks(searcher, IMAGES, cached, owners, depth)
            metrics = {f"t2i_r{k}": v for k, v in recall_from_ranks(t2i).items()}
            metrics |= {f"i2t_r{k}": v for k, v in recall_from_ranks(i2t).items()}
            metrics["rsum"] = sum(metrics.values())
            out[label] = metrics
            print(f"{label}: rsum {metrics['rsum']:.1f}", flush=True)
        index.meta.close()
    return out


@torch.inference_mode()
def ranks(searcher: Searcher, queries_from: str, cached: Any, owners: np.ndarray, depth: int) -> np.ndarray:
    """0-based rank of the right answer within the top 10 (10 = not found) for every caption or image query."""
    model = searcher.model
    total = cached.num_captions if queries_from == TEXTS else cached.num_images
    found = np.full(total, 10)
    for start in range(0, total, 256):
        idx = np.arange(start, min(start + 256, total))
        if queries_from == TEXTS:  # captions → images; the right image is the caption's own
            b = cached.text_batch(idx)
            e = model.encode_text(b.tokens, b.attention_mask, b.token_mask)
            queries, target, answers = (
                EncodedQueries(e.global_vector, e.words, e.word_mask),
                IMAGES,
                owners[idx],
            )
        else:  # images → captions; any caption of the image is right
            b = cached.image_batch(idx)
            e = model.encode_image(b.regions, b.boxes, b.region_mask)
            queries, target, answers = EncodedQueries(e.global_vector, e.regions, e.region_mask), TEXTS, idx
        for row, answer, hits in zip(
            idx, answers, searcher.search_encoded(target, queries, 10, depth), strict=True
        ):
            match = np.array([h.image_id for h in hits]) == answer
            if match.any():
                found[row] = int(np.argmax(match))
    return found


# ---- report -----------------------------------------------------------------------------------------
def targets(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, where, met) rows; met is None when the size needed was not run."""
    sizes = {r["images"]: r for r in results["sizes"]}
    rows: list[tuple[str, str, str, bool | None]] = []
    at_100k = sizes.get(100_000)
    if at_100k:
        for name, f in at_100k["factories"].items():
            rows.append(
                (
                    "100K: kNN+re-rank ≥ 300× faster than brute force",
                    f"{f['speedup_vs_brute_force']:.0f}×",
                    name,
                    f["speedup_vs_brute_force"] >= 300,
                )
            )
    else:
        rows.append(("100K: kNN+re-rank ≥ 300× faster than brute force", "not run", "", None))
    at_1m = sizes.get(1_000_000)
    for label, key, limit in (
        ("1M: search after encoding p95 ≤ 5 ms", "knn_rerank", 5.0),
        ("1M: end-to-end p95 ≤ 30 ms", "end_to_end", 30.0),
    ):
        if at_1m:
            for name, f in at_1m["factories"].items():
                rows.append((label, f"{f[key]['p95_ms']:.1f} ms", name, f[key]["p95_ms"] <= limit))
            if "served_alone" in at_1m:
                alone = at_1m["served_alone"]
                p95 = alone["kNN + re-rank" if key == "knn_rerank" else "end to end"]["p95_ms"]
                rows.append((label, f"{p95:.1f} ms", f"{alone['index']} alone", p95 <= limit))
        else:
            rows.append((label, "not run", results.get("skipped_1m", ""), None))
    if at_1m:
        for name, f in at_1m["factories"].items():
            if name != "Flat":
                rows.append(
                    ("1M: ANN recall@10 ≥ 0.95", f"{f['recall_at_10']:.3f}", name, f["recall_at_10"] >= 0.95)
                )
    else:
        rows.append(("1M: ANN recall@10 ≥ 0.95", "not run", "", None))
    if at_1m and "rss_gib" in at_1m.get("service", {}):
        v = at_1m["service"]
        rows.append(
            (
                "1M: the service's resident memory (reported)",
                f"{v['rss_gib']:.2f} GiB ({v['rss_anon_gib']:.2f} own + {v['rss_index_files_gib']:.2f} index "
                f"files' pages + {v['rss_other_files_gib']:.2f} other files)",
                f"aladin serve, {v['index']}",
                None,
            )
        )
    for r in results["sizes"]:
        scan = r["exact_scan"]
        cached = " (index fits in L3: scanned from cache)" if scan["fits_in_l3_cache"] else ""
        for label in ("default_threads", "one_thread"):
            x = scan[label]
            rows.append(
                (
                    "exact scan ≥ 50% of memory bandwidth",
                    f"{x['gbs']:.1f} GB/s = {x['share_of_bandwidth']:.0%} of {x['threads']}-thread DRAM bandwidth{cached}",
                    f"{r['images']:,}, FAISS on {x['threads']} thread(s)",
                    x["share_of_bandwidth"] >= 0.5,
                )
            )
    int8 = [r for r in results["sizes"] if "int8" in r]
    if int8:
        q = int8[-1]["int8"]
        rows.append(
            (
                "region store ≤ 1/4 of float32 size",
                f"int8 rows {q['rows_vs_float32']:.4f}, with the offsets array {q['store_vs_float32']:.4f} "
                f"(float16 {q['float16_store_vs_float32']:.4f})",
                f"{int8[-1]['images']:,}",
                q["rows_vs_float32"] <= 0.25,
            )
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Search benchmark",
        "",
        f"Machine: {m['cpus']} CPUs, L3 {m['l3_cache_mib']:.0f} MiB, load average {m['load_average_at_start']} at "
        f"start and {m.get('load_average_at_end')} at end (other jobs share the machine), OMP_WAIT_POLICY="
        f"{m['omp_wait_policy']}, DRAM read bandwidth {m['bandwidth']['one_thread_read_gbs']:.1f} GB/s (one thread), "
        f"{m['bandwidth']['all_threads_read_gbs']:.1f} GB/s (all threads). Synthetic galleries: 256-d global vectors, "
        f"49 regions × 256 per image ({results['region_dtype']} store, memory-mapped). Latencies: one query at a time, "
        f"k=10, re-rank top {RERANK}.",
        "",
        "| images | index | recall@10 | kNN p50 / p95 ms | kNN+re-rank p50 / p95 ms | end-to-end p50 / p95 ms | kNN+re-rank q/s | × brute force | build s | RAM B/item |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["sizes"]:
        for name, f in r["factories"].items():
            build = "–" if f["build_seconds"] is None else f"{f['build_seconds']:.1f}"
            lines.append(
                f"| {r['images']:,} | {name} {f['settings'] or ''} | {f['recall_at_10']:.3f} | "
                f"{f['knn_only']['p50_ms']:.2f} / {f['knn_only']['p95_ms']:.2f} | "
                f"{f['knn_rerank']['p50_ms']:.2f} / {f['knn_rerank']['p95_ms']:.2f} | "
                f"{f['end_to_end']['p50_ms']:.1f} / {f['end_to_end']['p95_ms']:.1f} | {f['knn_rerank']['qps']:.0f} | "
                f"{f['speedup_vs_brute_force']:.0f}× | {build} | {f['memory_bytes_per_item']:.0f} |"
            )
    lines += [
        "",
        "| images | brute force s/query | exact scan GB/s, default threads / one thread (share of DRAM bandwidth) | store write s | disk B/item (regions / FAISS Flat / SQLite / total) | peak RSS GiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["sizes"]:
        b, s, d = r["brute_force"], r["exact_scan"], r["disk_bytes_per_item"]
        note = f" (timed on {b['measured_images']:,}, extrapolated)" if b["extrapolated"] else ""
        scan = " / ".join(
            f"{s[k]['gbs']:.1f} ({s[k]['share_of_bandwidth']:.0%})" for k in ("default_threads", "one_thread")
        )
        scan += " in L3" if s["fits_in_l3_cache"] else ""
        lines.append(
            f"| {r['images']:,} | {b['seconds_per_query']:.2f}{note} | {scan} | {r['store_write_seconds']:.1f} | "
            f"{d['region_store']:.0f} / {d['faiss_flat']:.0f} / {d['metadata_sqlite']:.0f} / {d['total']:.0f} | "
            f"{r['peak_rss_gib']:.1f} |"
        )
    alone = [r for r in results["sizes"] if "served_alone" in r]
    if alone:
        stages = [k for k in alone[0]["served_alone"] if k != "index"]
        lines += [
            "",
            "The served index by itself (no other index's scan between its queries, as in a service), whole "
            "searches and the stages of one, p50 / p95 ms:",
            "",
            "| images | index | " + " | ".join(stages) + " |",
            "|---:|---|" + "---:|" * len(stages),
        ]
        for r in alone:
            v = r["served_alone"]
            cells = " | ".join(f"{v[k]['p50_ms']:.2f} / {v[k]['p95_ms']:.2f}" for k in stages)
            lines.append(f"| {r['images']:,} | {v['index']} | {cells} |")
    served = [r for r in results["sizes"] if "service" in r]
    if served:
        lines += [
            "",
            f"`aladin serve` on the served index (its defaults; started right after the benchmark wrote the index, "
            f"so the checksum pass read a warm page cache), {SERVICE_QUERIES} different text searches re-ranking "
            f"the top {RERANK}, sent one at a time over HTTP; then its resident memory: its own (FAISS index, "
            "model, Python), the index files' pages it has mapped (page cache, shared) and other files "
            "(libraries, model weights):",
            "",
            "| images | index | start s | HTTP p50 / p95 ms | resident GiB | own | index files | other files | peak resident GiB |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in served:
            v = r["service"]
            if "rss_gib" not in v:
                lines.append(f"| {r['images']:,} | {v['index']} | failed: {v.get('error', '?')} |")
                continue
            lines.append(
                f"| {r['images']:,} | {v['index']} | {v['start_seconds']:.1f} | {v['http_p50_ms']:.1f} / "
                f"{v['http_p95_ms']:.1f} | {v['rss_gib']:.2f} | {v['rss_anon_gib']:.2f} | "
                f"{v['rss_index_files_gib']:.2f} | {v['rss_other_files_gib']:.2f} | {v['peak_rss_gib']:.2f} |"
            )
    int8 = [r for r in results["sizes"] if "int8" in r]
    if int8:
        lines += [
            "",
            "| images | int8 store / float32 | float16 store / float32 | int8 mean cosine (min) | top-10 agreement with float16 after re-rank |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in int8:
            q = r["int8"]
            rec = q["reconstruction"]
            lines.append(
                f"| {r['images']:,} | {q['store_vs_float32']:.4f} | {q['float16_store_vs_float32']:.4f} | {rec['mean_cosine']:.5f} ({rec['min_cosine']:.4f}) | {q['top10_agreement_with_float16_after_rerank']:.3f} |"
            )
    if "quality" in results:
        q = results["quality"]
        lines += [
            "",
            f"Retrieval quality on the test split ({q['images']} images, {q['captions']} captions):",
            "",
            "| scorer | i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | rsum |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, v in q.items():
            if isinstance(v, dict) and "rsum" in v:
                lines.append(
                    f"| {name} | "
                    + " | ".join(
                        f"{v[k]:.1f}"
                        for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
                    )
                    + " |"
                )
    lines += ["", "## Targets", "", "| target | measured | where | met |", "|---|---|---|---|"]
    for target, measured, where, met in targets(results):
        lines.append(
            f"| {target} | {measured} | {where} | {'–' if met is None else 'yes' if met else 'NO'} |"
        )
    lines += ["", *[f"- {note}" for note in results["notes"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="gallery sizes, comma separated")
    parser.add_argument("--queries", type=int, default=200, help="queries per latency measurement")
    parser.add_argument("--e2e-queries", type=int, default=50, help="text queries for end-to-end latency")
    parser.add_argument("--brute-queries", type=int, default=3, help="queries for the brute-force timing")
    parser.add_argument("--model", help="checkpoint folder (default: a randomly initialised model)")
    parser.add_argument(
        "--cache", help="feature cache with a test split: adds rsum of kNN vs re-rank (needs --model)"
    )
    parser.add_argument("--workdir", help="where the galleries are written (default: a temporary folder)")
    parser.add_argument("--skip-int8", action="store_true", help="skip the int8 store comparison")
    parser.add_argument(
        "--skip-service", action="store_true", help="skip starting `aladin serve` on each gallery"
    )
    parser.add_argument(
        "--region-dtype",
        choices=["float16", "int8"],
        default=IndexConfig().region_dtype,
        help="store of the galleries timed (default: the index's default)",
    )
    parser.add_argument("--out", default=str(RESULTS), help="folder for search.json and search.md")
    parser.add_argument(
        "--backends",
        default="faiss",
        help="faiss (default: the full benchmark) or e.g. faiss,milvus: compare vector backends side by side "
        "(writes search.milvus.json/.md)",
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    backends = [b for b in args.backends.split(",") if b]
    if args.cache and not args.model:
        parser.error("--cache needs --model (a model trained on that cache's encoders)")

    torch.manual_seed(0)
    model = AladinModel.from_pretrained(args.model) if args.model else AladinModel(AladinConfig()).eval()
    if (model.config.model.global_dim, model.config.model.embed_dim) != (DIM, DIM):
        raise SystemExit(f"the synthetic galleries use {DIM}-d vectors; this model has other dimensions")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="aladin-search-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    args.model_dir = args.model or str(workdir / "model")
    if not args.model:  # the service loads the model from disk
        model.save_pretrained(args.model_dir)
    if backends != ["faiss"]:
        try:
            return run_backends(sizes, backends, model, workdir, args)
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "l3_cache_mib": l3_cache_bytes() / 2**20,
            "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
        },
        "model": args.model or "random init, default config",
        "region_dtype": args.region_dtype,
        "sizes": [],
        "notes": [
            "IVF/HNSW share the Flat index's region store and metadata (hard-linked by `migrate_index`); "
            "build s = `migrate_index`: building their FAISS index plus two checksum passes over the index files "
            "(loading the source, then the copy). HNSW is searched with the index's default ef_search.",
            "Every gallery is loaded as `aladin serve` loads it (checksums verified, so each file is read once, "
            "right after it was written) before it is timed.",
            "kNN and re-rank latencies start from encoded queries (synthetic 12-word queries); end-to-end starts "
            "from text (MiniLM + the model's text side, on CPU).",
            "RAM B/item = serialised FAISS index per item (it is loaded into memory); the region store is "
            "memory-mapped, so it occupies page cache, not process memory.",
            "Brute force = the alignment head over every image's stored regions (Searcher.exhaustive_encoded).",
        ],
    }
    print("measuring memory bandwidth ...", flush=True)
    results["machine"]["bandwidth"] = memory_bandwidth()
    print(results["machine"], flush=True)
    data = Synthetic()
    started = time.perf_counter()
    try:
        for n in sizes:
            needed = n * (REGIONS * DIM * 2 + 2 * DIM * 4 + 200) * 1.1
            free = shutil.disk_usage(workdir).free
            if needed > free:
                note = f"{n:,} skipped: needs ~{needed / 1e9:.0f} GB of disk, {free / 1e9:.0f} GB free"
                results["notes"].append(note)
                results["skipped_1m"] = note if n >= 1_000_000 else results.get("skipped_1m", "")
                print(note, flush=True)
                continue
            results["sizes"].append(run_size(n, model, data, workdir, args, results["machine"]["bandwidth"]))
        if args.cache:
            results["quality"] = retrieval_quality(model, Path(args.cache), workdir, RERANK)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return finish(results, started, Path(args.out), "search", markdown)


def finish(
    results: dict[str, Any], started: float, out: Path, stem: str, render: Callable[[dict[str, Any]], str]
) -> int:
    """Stamp the run's duration and load, write `<stem>.json` and `<stem>.md`, print the report."""
    results["seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    report = render(results)
    (out / f"{stem}.md").write_text(report)
    print("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
