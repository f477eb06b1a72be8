"""`aladin index build|add|sync|remove|info|migrate|duplicates` and `aladin search`: flags → the index/search API → a
table or JSON.

`register(subparsers)` adds the commands to the `aladin` parser; each sets `func`, so `args.func(args)` runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aladin.cli.models import (
    add_duplicate_threshold_flag,
    add_model_flags,
    duplicate_setting,
    load_model,
    warn_missing_files,
)
from aladin.errors import AladinError
from aladin.index.config import BACKENDS, REGION_DTYPES, DuplicateConfig, IndexConfig

if TYPE_CHECKING:  # rich is imported by the handlers: `aladin --help` stays light
    from rich.console import Console
    from rich.table import Table


def register(subparsers: Any) -> None:
    """Add `index build|add|sync|remove|info|migrate|duplicates` and `search` to an argparse subparsers object."""
    defaults = IndexConfig()
    index = subparsers.add_parser("index", help="build and maintain a search index")
    commands = index.add_subparsers(dest="index_command", required=True)

    p = commands.add_parser("build", help="encode images (and captions) into a new search index")
    p.add_argument("source", help="folder of images, dataset folder (captions.jsonl) or feature cache split")
    p.add_argument("--out", required=True, help="index folder to write")
    add_model_flags(p)
    p.add_argument("--factory", default=defaults.factory, help="Flat (exact), IVF<nlist>,Flat or HNSW<M>")
    p.add_argument("--nprobe", type=int, default=defaults.nprobe, help="IVF lists searched per query")
    p.add_argument("--ef-search", type=int, default=defaults.ef_search, help="HNSW candidate list size")
    p.add_argument(
        "--region-dtype",
        choices=REGION_DTYPES,
        default=defaults.region_dtype,
        help="how the region store keeps each region vector",
    )
    p.add_argument("--pq-m", type=int, default=defaults.pq_m, help="pq: sub-quantisers (0: embed_dim / 8)")
    p.add_argument("--pq-nbits", type=int, default=defaults.pq_nbits, help="pq: bits per sub-quantiser")
    p.add_argument(
        "--residual-centroids",
        type=int,
        default=defaults.residual_centroids,
        help="residual2/residual1: k-means centroids (0: automatic, 1: no centroid ids)",
    )
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images encoded at once")
    p.add_argument("--with-texts", action="store_true", help="also index the captions (image→text search)")
    p.add_argument("--split", help="only this split of a dataset folder (feature cache: default test)")
    p.add_argument("--overwrite", action="store_true", help="replace an index already in --out")
    _add_strict_flag(p)
    _add_backend_flags(p)
    p.set_defaults(func=_build)

    p = commands.add_parser("add", help="encode more images into an index")
    p.add_argument("index", help="index folder")
    p.add_argument(
        "paths",
        nargs="+",
        help="image files or folders (searched recursively); files already indexed are skipped",
    )
    add_model_flags(p)
    _add_strict_flag(p)
    p.set_defaults(func=_add)

    p = commands.add_parser(
        "sync",
        help="make an index hold exactly the images of its folder, encoding only new and changed files",
    )
    p.add_argument("folder", help="the folder of images the index was built from")
    p.add_argument("--index", required=True, help="index folder (built from FOLDER when it holds none yet)")
    add_model_flags(p)
    p.add_argument("--dry-run", action="store_true", help="print what would change and write nothing")
    p.add_argument("--watch", action="store_true", help="keep syncing as files change (Ctrl-C stops)")
    _add_strict_flag(p)
    p.set_defaults(func=_sync)

    p = commands.add_parser("remove", help="remove images (and their captions) from an index")
    p.add_argument("index", help="index folder")
    p.add_argument("ids", nargs="+", type=int, help="image ids (as shown by `aladin search`)")
    p.set_defaults(func=_remove)

    p = commands.add_parser("info", help="what an index holds: counts, sizes, settings, model")
    p.add_argument("index", help="index folder")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_info)

    p = commands.add_parser(
        "migrate", help="copy an index into a new folder with its vectors in another backend"
    )
    p.add_argument("source", help="index folder to read (left unchanged)")
    p.add_argument("target", help="new index folder to write")
    p.add_argument("--factory", help="Flat, IVF<nlist>,Flat or HNSW<M> (default: the source's)")
    _add_backend_flags(p)
    p.set_defaults(func=_migrate)

    _add_duplicates_parser(commands)

    p = subparsers.add_parser("search", help="search an index with a text (or --image)")
    p.add_argument("query", nargs="?", help="the text to search images for")
    p.add_argument("--image", help="search with this image instead of a text")
    p.add_argument(
        "--target",
        choices=["images", "texts"],
        default="images",
        help="with --image: similar images or captions",
    )
    p.add_argument("--index", required=True, help="index folder")
    add_model_flags(p)
    p.add_argument("--k", type=int, default=10, help="results to show")
    p.add_argument(
        "--rerank",
        type=int,
        help="kNN candidates re-ranked by the alignment head (0: none; default: the model's setting chosen "
        "on validation, else 100)",
    )
    p.add_argument("--nprobe", type=int, help="override the index's IVF nprobe")
    p.add_argument("--ef-search", type=int, help="override the index's HNSW efSearch")
    p.add_argument(
        "--filter",
        help="only items whose Milvus fields match an expression, e.g. 'folder == \"beach\"' (fields: image_id, "
        "external_id, path, folder; milvus backend; --where works on both)",
    )
    p.add_argument(
        "--where",
        help="only photos matching a filter, e.g. 'taken>=2020-01-01 and camera~Pixel' (fields: taken, camera, "
        "make, model, gps, orientation, width, height, type, folder, path, id; = != < <= > >= ~ (contains); "
        "and, or, not, parentheses; see the README)",
    )
    p.add_argument(
        "--skip-checksums", action="store_true", help="check file sizes only when loading (faster)"
    )
    p.add_argument(
        "--collapse",
        action="store_true",
        help="one hit per group of near-duplicate images (its 'similar' column counts the others)",
    )
    add_duplicate_threshold_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--min-score",
        type=float,
        metavar="P",
        help="only hits whose confidence (calibrated P(true match), 0..1) is at least P",
    )
    p.set_defaults(func=_search)


def _add_strict_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first file that cannot be indexed (default: leave it out with a warning and list it "
        "in the summary and the manifest)",
    )


def _print_skipped(console: Console, skipped: list[dict[str, str]]) -> None:
    """The files a build or add left out, one line each, after its summary."""
    if skipped:
        console.print(f"left out {len(skipped)} file(s) that cannot be indexed:", markup=False)
        for entry in skipped:
            console.print(f"  {entry['path']}: {entry['reason']}", markup=False, soft_wrap=True)


def _add_backend_flags(parser: argparse.ArgumentParser) -> None:
    defaults = IndexConfig()
    parser.add_argument(
        "--backend", choices=BACKENDS, default=defaults.backend, help="where the global vectors live"
    )
    parser.add_argument(
        "--uri",
        default=defaults.uri,
        help="milvus: a Milvus Lite folder ending in .db (default INDEX/milvus.db) or http(s)://host:port of a "
        "server; the token is read from $ALADIN_MILVUS_TOKEN",
    )
    parser.add_argument(
        "--collection",
        default=defaults.collection,
        help="milvus: collection name prefix (default from the folder)",
    )


def _uri(args: argparse.Namespace) -> str:
    """--uri as the backend reads a path typed on the command line (relative to the working directory)."""
    from aladin.index.backend import backend_class

    return backend_class(args.backend).user_uri(args.uri)


def _build(args: argparse.Namespace) -> None:
    from rich.console import Console

    from aladin import distributed
    from aladin.index.builder import build_index
    from aladin.model.pretrained import default_model_dir

    distributed.init_from_env()  # under torchrun: load the model on this rank's GPU, not all on GPU 0
    model = load_model(args)
    cfg = IndexConfig(
        factory=args.factory,
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        region_dtype=args.region_dtype,
        batch_size=args.batch_size,
        pq_m=args.pq_m,
        pq_nbits=args.pq_nbits,
        residual_centroids=args.residual_centroids,
        backend=args.backend,
        uri=_uri(args),
        collection=args.collection,
    )
    started = time.perf_counter()
    index = build_index(
        args.source,
        model,
        args.out,
        cfg,
        with_texts=args.with_texts,
        split=args.split,
        overwrite=args.overwrite,
        checkpoint=str(args.model or default_model_dir()),
        strict=args.strict,
    )
    texts = f" and {index.meta.count('texts')} captions" if index.has_texts else ""
    console = Console()
    console.print(
        f"indexed {len(index)} images{texts} into {args.out} in {time.perf_counter() - started:.1f} s",
        markup=False,
    )
    _print_skipped(console, index.manifest["skipped"])


def _add(args: argparse.Namespace) -> None:
    from rich.console import Console

    from aladin.index.builder import add_images
    from aladin.index.index import SearchIndex

    model = load_model(args, args.index)
    index = SearchIndex.load(args.index, model)
    report = add_images(index, args.paths, progress=True, strict=args.strict)
    console = Console()
    console.print(f"{report.summary()}; the index now holds {len(index)} images", markup=False)
    _print_skipped(console, [s.to_json() for s in report.skipped])


def _sync(args: argparse.Namespace) -> None:
    from rich.console import Console

    from aladin.index.index import SearchIndex
    from aladin.index.manifest import MANIFEST_NAME
    from aladin.index.sync import SyncReport, sync_folder, watch_folder

    console = Console()
    if args.dry_run and args.watch:
        raise AladinError("sync: --dry-run and --watch do not go together")
    exists = (Path(args.index) / MANIFEST_NAME).is_file()
    if not exists and args.dry_run:
        console.print(f"{args.index} holds no index: sync would build one of {args.folder}", markup=False)
        return
    if not exists:
        _build_for_sync(args, console)
    index = SearchIndex.load(args.index, load_model(args, args.index), verify_checksums=False)

    def show(report: SyncReport) -> None:
        said = "would change" if args.dry_run else f"synced (version {report.generation})"
        console.print(f"{said}: {report.summary()}; {report.images} images indexed", markup=False)
        for line in report.plan.lines() if args.dry_run else ():
            console.print(f"  {line}", markup=False, soft_wrap=True)
        for bad in report.unreadable:
            console.print(f"  left out {bad}", markup=False, soft_wrap=True)

    if not args.watch:
        show(sync_folder(index, args.folder, dry_run=args.dry_run, strict=args.strict, progress=True))
        return
    console.print(f"watching {args.folder} (Ctrl-C stops)", markup=False)
    try:
        watch_folder(index, args.folder, show)
    except KeyboardInterrupt:
        console.print("stopped watching; the index holds the last completed sync", markup=False)


def _build_for_sync(args: argparse.Namespace, console: Console) -> None:
    """`sync` into an empty folder is a build with the default settings."""
    from aladin.index.builder import build_index
    from aladin.model.pretrained import default_model_dir

    index = build_index(
        args.folder,
        load_model(args),
        args.index,
        checkpoint=str(args.model or default_model_dir()),
        strict=args.strict,
    )
    console.print(f"built an index of {len(index)} images from {args.folder}", markup=False)


def _remove(args: argparse.Namespace) -> None:
    from rich.console import Console

    from aladin.index.index import SearchIndex

    index = SearchIndex.load(args.index)
    index.remove(args.ids)
    Console().print(f"removed {len(set(args.ids))} images; the index now holds {len(index)}")


def _info(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from aladin.index.index import SearchIndex

    info = SearchIndex.load(args.index, verify_checksums=False).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=f"index {info['directory']} (version {info['generation']})", show_header=False)
    table.add_row(
        "model", f"{info['model']['fingerprint']} ({info['model']['checkpoint'] or 'checkpoint unknown'})"
    )
    table.add_row("settings", ", ".join(f"{k}={v}" for k, v in info["index_config"].items()))
    for kind, c in info["collections"].items():
        table.add_row(kind, _collection_line(c, info["index_config"]["region_dtype"]))
    table.add_row("on disk", f"{info['total_bytes'] / 2**20:.1f} MiB")
    Console().print(table)


def _collection_line(c: dict[str, Any], dtype: str) -> str:
    """One side of `index info`: counts, where the vectors are, the store and its reconstruction error."""
    vectors = c["vectors"]
    where = vectors.get("collection") or vectors.get("file")
    line = f"{c['live']} live, {c['removed']} removed, vectors in {vectors['backend']} ({where}), "
    line += f"{c['segments']} segments, {c['store_bytes'] / 2**20:.1f} MiB store"
    if c.get("quantizer_bytes"):
        line += f" (quantiser {c['quantizer_bytes'] / 2**10:.1f} KiB)"
    for rec in c["reconstruction"]:
        line += f"; {dtype} mean cosine {rec['mean_cosine']:.5f}, min {rec['min_cosine']:.4f}"
    return line


def _migrate(args: argparse.Namespace) -> None:
    from rich.console import Console

    from aladin.index.migrate import migrate_index

    started = time.perf_counter()
    index = migrate_index(args.source, args.target, args.backend, _uri(args), args.collection, args.factory)
    Console().print(
        f"moved {len(index)} images to {args.target} ({args.backend} backend) "
        f"in {time.perf_counter() - started:.1f} s"
    )


def _search(args: argparse.Namespace) -> None:
    from rich.console import Console

    from aladin.index.filters import parse_filter
    from aladin.model.aladin import AladinModel
    from aladin.pipeline import resolve_device
    from aladin.search.searcher import QueryTruncatedWarning, Searcher, keep_confident

    if (args.query is None) == (args.image is None):
        raise AladinError("search: give either a text query or --image PATH")
    # a filter with bad syntax fails before the model loads
    where = None if args.where is None else parse_filter(args.where)
    device = resolve_device(args.device)
    model = None if args.model is None else AladinModel.from_pretrained(args.model, device)
    searcher = Searcher.open(
        args.index,
        model,
        device,
        verify_checksums=not args.skip_checksums,
        duplicates=duplicate_setting(args),
    )
    warn_missing_files(searcher.index)
    searcher.index.set_search_params(args.nprobe, args.ef_search)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QueryTruncatedWarning)
        if args.image is not None:
            hits = searcher.search_image(
                args.image, args.k, args.rerank, args.target, where, args.filter, args.collapse
            )
        else:
            hits = searcher.search_text(args.query, args.k, args.rerank, where, args.filter, args.collapse)
    for warning in caught:
        print(f"aladin: warning: {warning.message}", file=sys.stderr)
    found = len(hits)
    hits = keep_confident(hits, args.min_score, searcher.model)
    query = args.query if args.image is None else args.image
    if args.json:
        print(json.dumps({"query": query, "hits": [hit.to_json() for hit in hits]}, indent=2))
        return
    if found and not hits:  # hits were found, none confident enough
        print(f"no confident match: no hit has a confidence of at least {args.min_score:.0%}")
        return
    Console().print(_hits_table(query, hits, args.collapse))


def _hits_table(query: str, hits: list[Any], collapse: bool = False) -> Table:
    """The results as a table titled by the query (its start, for a long one); collapsed: with the count of
    near-duplicates each hit stands for."""
    from rich.table import Table

    shown = query if len(query) <= 80 else query[:77] + "..."
    table = Table(title=f"{shown!r}: top {len(hits)}")
    for column in ("rank", "id", "score", "kNN score", "confidence"):
        table.add_column(column, justify="right")
    table.add_column("external id")
    table.add_column("caption" if hits and hits[0].caption else "path")
    if collapse:
        table.add_column("similar", justify="right")
    for rank, hit in enumerate(hits, start=1):
        knn = "" if hit.first_stage_score is None else f"{hit.first_stage_score:.4f}"
        confidence = "" if hit.confidence is None else f"{hit.confidence:.0%}"
        row = [
            str(rank),
            str(hit.id),
            f"{hit.score:.4f}",
            knn,
            confidence,
            hit.external_id,
            hit.caption or hit.path,
        ]
        table.add_row(*row, *([str(hit.similar)] if collapse else []))
    return table


def _add_duplicates_parser(commands: Any) -> None:
    p = commands.add_parser("duplicates", help="list groups of near-duplicate images in an index")
    p.add_argument("--index", required=True, help="index folder")
    p.add_argument(
        "--threshold",
        type=float,
        default=DuplicateConfig().threshold,
        help="least cosine of two images' vectors that makes them near-duplicates (higher: stricter)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_duplicates)


def _duplicates(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from aladin.index.duplicates import find_duplicates

    groups = find_duplicates(args.index, DuplicateConfig(threshold=args.threshold))
    if args.json:
        print(json.dumps({"threshold": args.threshold, "groups": [g.to_json() for g in groups]}, indent=2))
        return
    plural = "" if len(groups) == 1 else "s"
    table = Table(title=f"{len(groups)} group{plural} of near-duplicates (cosine >= {args.threshold})")
    for column in ("group", "id", "similarity", "path"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for number, group in enumerate(groups, start=1):
        for member in group.members:
            keep = " (best)" if member is group.best else ""
            table.add_row(str(number), str(member.id), f"{member.similarity:.4f}", member.path + keep)
        table.add_section()
    Console().print(table)
