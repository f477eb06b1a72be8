"""Compact region stores beyond int8 (issue #26): bytes per image and rsum of kNN + re-rank, store by store.

For a trained model and its feature cache, the test split's index (images and captions) is built once per
candidate store through the library's writer (`retrieval_quality` of benchmarks/search.py), and searched both
ways: rsum of kNN only and of kNN + re-rank at the model's validated re-rank depth (100 when the checkpoint
records none). Candidates: int8 (the reference and default), float16, the PLAID-style residual stores (a k-means
centroid id of 2 bytes plus a 2-bit or 1-bit residual per dimension), the 2-bit residual without centroid ids
(one centroid: plain per-dimension quantiles, exactly a quarter of int8), and PQ at a quarter (m = dim / 4) and
an eighth (the default m = dim / 8) of int8. Trained codecs are trained on the index's own rows, as a fresh
index's first segment is. The caption word store uses the same codec, so image → text re-ranking reads it too.

A store passes when it keeps >= 99% of int8's re-rank rsum at <= 1/4 of int8's region-row bytes.

    python benchmarks/compact_store.py --model RUN/model --cache RUN/cache --name demo [--stores int8,residual2]

Each run replaces its --name in benchmarks/results/compact_store.json; compact_store.md is rendered from all.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/search.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from search import retrieval_quality  # noqa: E402

from aladin.fileio import atomic_write, read_json, write_json  # noqa: E402
from aladin.index import IMAGES, IndexConfig, SearchIndex  # noqa: E402
from aladin.index.manifest import read_manifest  # noqa: E402
from aladin.model.aladin import AladinModel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE = "int8"
#: The bar for shipping a store: share of int8's re-rank rsum kept, and most bytes per region row against int8.
KEEP, SIZE = 0.99, 0.25


def candidates(dim: int) -> dict[str, IndexConfig]:
    """Every store measured, int8 first (kNN only is measured on the first: kNN never reads the store)."""
    base = IndexConfig(batch_size=256)
    return {
        REFERENCE: replace(base, region_dtype="int8"),
        "float16": replace(base, region_dtype="float16"),
        "residual2": replace(base, region_dtype="residual2"),
        "residual1": replace(base, region_dtype="residual1"),
        "residual2-no-ids": replace(base, region_dtype="residual2", residual_centroids=1),
        f"pq-m{dim // 4}": replace(base, region_dtype="pq", pq_m=dim // 4),
        f"pq-m{dim // 8}": replace(base, region_dtype="pq"),
    }


def store_sizes(directory: Path) -> dict[str, Any]:
    """Bytes of the image store's region rows, and of the whole store (offsets, boxes, codebook), per image."""
    manifest = read_manifest(directory)
    files, entry = manifest["files"], manifest["collections"]["images"]
    images = sum(s["count"] for s in entry["segments"])
    rows = sum(s["rows"] for s in entry["segments"])
    data = sum(files[s["data"]]["bytes"] for s in entry["segments"])
    named = {s[k] for s in entry["segments"] for k in ("data", "offsets", "boxes", "quantizer") if s.get(k)}
    return {
        "images": images,
        "rows_per_image": rows / images,
        "bytes_per_row": data / rows,
        "row_bytes_per_image": data / images,
        "store_bytes_per_image": sum(files[name]["bytes"] for name in named) / images,
        "codebook_bytes": sum(
            files[s["quantizer"]]["bytes"] for s in entry["segments"][:1] if s.get("quantizer")
        ),
        "reconstruction": [s["reconstruction"] for s in entry["segments"] if s["reconstruction"]],
    }


def lookup_ms(directory: Path, model: AladinModel, items: int = 100, repeats: int = 30) -> float:
    """Median time to read and decode `items` random images' regions: what re-ranking one query costs the store."""
    index = SearchIndex.load(directory, model)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats + 3):  # the first reads warm the page cache and the allocator
        ids = rng.choice(len(index), min(items, len(index)), replace=False)
        started = time.perf_counter()
        index.lookup(IMAGES, ids)
        times.append(time.perf_counter() - started)
    index.meta.close()
    return float(np.median(times[3:]) * 1e3)


def measure(model_dir: str, cache: Path, workdir: Path, names: list[str] | None) -> dict[str, Any]:
    """Build and search the test split's index with each store in `names` (None: all); the rows of the table."""
    model = AladinModel.from_pretrained(model_dir)
    setting = model.rerank
    depth = setting.depth if setting.validated else 100
    stores = candidates(model.config.model.embed_dim)
    unknown = sorted(set(names or ()) - set(stores))
    if unknown:
        raise SystemExit(f"unknown stores {unknown}; choose from {', '.join(stores)}")
    chosen = {name: cfg for name, cfg in stores.items() if names is None or name in names}
    if REFERENCE not in chosen:
        raise SystemExit(f"--stores must include the reference {REFERENCE}")
    quality = retrieval_quality(model, cache, workdir, depth, chosen)
    reference = quality[f"kNN + re-rank {depth} ({REFERENCE} store)"]["rsum"]
    rows: dict[str, Any] = {}
    for name, cfg in chosen.items():
        sizes = store_sizes(workdir / f"quality-{name}")
        sizes["lookup_ms_100_images"] = lookup_ms(workdir / f"quality-{name}", model)
        rsum = quality[f"kNN + re-rank {depth} ({name} store)"]["rsum"]
        rows[name] = {
            **sizes,
            "index_config": {k: getattr(cfg, k) for k in ("region_dtype", "pq_m", "residual_centroids")},
            "rsum_rerank": rsum,
            "share_of_int8_rsum": rsum / reference,
        }
    int8_bytes = rows[REFERENCE]["row_bytes_per_image"]
    for row in rows.values():
        row["size_vs_int8"] = row["row_bytes_per_image"] / int8_bytes
        row["passes"] = row["share_of_int8_rsum"] >= KEEP and row["size_vs_int8"] <= SIZE
    return {
        "model": model_dir,
        "cache": str(cache),
        "images": quality["images"],
        "captions": quality["captions"],
        "rerank_depth": depth,
        "rerank_depth_from": "the checkpoint's validated depth" if setting.validated else "default 100",
        "rsum_knn_only": quality["kNN only"]["rsum"],
        "stores": rows,
        "quality": quality,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Compact region stores beyond int8 (issue #26)",
        "",
        "Generated by benchmarks/compact_store.py. Bytes per image: the image store's region rows (the caption "
        "word store uses the same codec and is not counted); total adds the offsets, boxes and the trained "
        "codebook (amortised over this small test split; it does not grow with the collection). Passes: >= 99% "
        "of int8's re-rank rsum at <= 1/4 of its region-row bytes. Mean cosine: decoded against original region "
        "rows. % of int8's gain: how much of what re-ranking adds to kNN with int8 the store keeps (more telling than "
        "% of rsum where re-ranking adds little). Lookup ms: median time to read and decode 100 random images' regions (one query's re-rank "
        "input), on a machine shared with other jobs.",
    ]
    for name, run in results["runs"].items():
        lines += [
            "",
            f"## {name}",
            "",
            f"Model `{run['model']}`, cache `{run['cache']}`: test split of {run['images']} images, "
            f"{run['captions']} captions, {run['stores'][REFERENCE]['rows_per_image']:.1f} regions per image. "
            f"Re-rank depth {run['rerank_depth']} ({run['rerank_depth_from']}). rsum of kNN only (no store read): "
            f"{run['rsum_knn_only']:.1f}. Measured {run['date']}, {run['seconds'] / 60:.0f} min.",
            "",
            "| store | B/row | B/image (rows) | vs int8 | B/image (total) | mean cosine | rsum kNN + re-rank | % of int8 | % of int8's gain | passes | lookup ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        gain = run["stores"][REFERENCE]["rsum_rerank"] - run["rsum_knn_only"]
        stores = sorted(
            run["stores"].items(), key=lambda item: (item[0] != REFERENCE, -item[1]["bytes_per_row"])
        )
        for store, row in stores:
            cosine = row["reconstruction"][0]["mean_cosine"] if row["reconstruction"] else 1.0
            kept = f"{100 * (row['rsum_rerank'] - run['rsum_knn_only']) / gain:.0f}%" if gain > 0 else "–"
            lines.append(
                f"| {store} | {row['bytes_per_row']:.0f} | {row['row_bytes_per_image']:.0f} | "
                f"{row['size_vs_int8']:.3f} | {row['store_bytes_per_image']:.0f} | {cosine:.4f} | "
                f"{row['rsum_rerank']:.1f} | {100 * row['share_of_int8_rsum']:.1f}% | "
                f"{kept} | "
                f"{'reference' if store == REFERENCE else 'yes' if row['passes'] else 'no'} | {row['lookup_ms_100_images']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint folder")
    parser.add_argument("--cache", help="its feature cache (with a test split)")
    parser.add_argument("--name", help="the results' section, e.g. demo or coco")
    parser.add_argument("--render", action="store_true", help="only rewrite compact_store.md from the JSON")
    parser.add_argument("--stores", default="", help="comma-separated subset of the stores (default: all)")
    parser.add_argument("--workdir", help="where the indexes are built (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="torch and FAISS threads")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    out = Path(args.out)
    path = out / "compact_store.json"
    results = read_json(path, "compact store results") if path.exists() or args.render else {"runs": {}}
    if not args.render:
        if not (args.model and args.cache and args.name):
            parser.error("--model, --cache and --name are needed (or --render)")
        results["runs"][args.name] = run(args)
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, results)
    report = markdown(results)
    atomic_write(out / "compact_store.md", lambda tmp: tmp.write_text(report))
    print("\n" + report)
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One --name's measurement, stamped with its duration, date and load."""
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    names = [s for s in args.stores.split(",") if s] or None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aladin-compact-") as temporary:
        workdir = Path(args.workdir or temporary)
        measured = measure(args.model, Path(args.cache), workdir, names)
    measured["seconds"] = time.perf_counter() - started
    measured["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    measured["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return measured


if __name__ == "__main__":
    sys.exit(main())
