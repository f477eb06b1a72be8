"""`aladin serve` (the HTTP service and search page) and `aladin explain` (a match's heatmap as a PNG).

`register(subparsers)` adds the commands to the `aladin` parser; each sets `func`, so `args.func(args)` runs it.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aladin.cli.models import (
    add_duplicate_threshold_flag,
    add_model_flags,
    duplicate_setting,
    load_model,
    warn_missing_files,
)
from aladin.errors import AladinError


def register(subparsers: Any) -> None:
    """Add `serve` and `explain` to an argparse subparsers object."""
    from aladin.service.config import ServiceConfig

    defaults = ServiceConfig()
    p = subparsers.add_parser("serve", help="serve an index over HTTP: JSON API, search page, /docs")
    p.add_argument("--index", required=True, help="index folder")
    add_model_flags(p)
    p.add_argument("--host", default=defaults.host, help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free one)")
    p.add_argument(
        "--allowed-hosts",
        type=lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
        default=defaults.allowed_hosts,
        help="comma-separated host names clients may use besides localhost, 127.0.0.1, [::1] and --host "
        "(requests naming others get 400, against DNS rebinding); '*' allows any",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        default=defaults.queue_size,
        help="model calls queued at most (more get 503)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=defaults.max_batch,
        help="searches answered together in one model call at most (1: no batching)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=defaults.max_wait_ms,
        help="how long the model thread waits for more searches to fill a batch",
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20, help="largest image upload"
    )
    p.add_argument(
        "--max-pixels", type=int, default=defaults.max_pixels, help="largest image (width × height)"
    )
    p.add_argument(
        "--image-root",
        help="serve thumbnails only from inside this folder (default: the one holding all images)",
    )
    p.add_argument(
        "--skip-checksums", action="store_true", help="check file sizes only when loading (faster)"
    )
    add_duplicate_threshold_flag(p)
    p.set_defaults(func=_serve)

    p = subparsers.add_parser("explain", help="draw where in an image each content word of a text matches")
    p.add_argument("text", help="the text to explain")
    p.add_argument("image", help="an image file (need not be indexed)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--word", action="append", help="draw only this content word (repeatable; default all)")
    p.add_argument("--index", help="take the model recorded by this index (instead of --model)")
    add_model_flags(p)
    p.set_defaults(func=_explain)


def _serve(args: argparse.Namespace) -> None:
    from pathlib import Path

    try:
        import uvicorn

        from aladin.service.app import create_app
    except ImportError as exc:
        raise AladinError(
            f"serve needs the serve extra ({exc.name} is missing): pip install 'aladin[serve]'"
        ) from exc
    from aladin.index.index import SearchIndex
    from aladin.search.searcher import Searcher
    from aladin.service.config import ServiceConfig

    config = ServiceConfig(
        queue_size=args.queue_size,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        image_root=Path(args.image_root) if args.image_root else None,
        host=args.host,
        allowed_hosts=args.allowed_hosts,
    )
    with _listen(args.host, args.port) as sock:  # before loading anything: a taken port fails at once
        model = load_model(args, args.index)
        index = SearchIndex.load(args.index, model, verify_checksums=not args.skip_checksums)
        warn_missing_files(index)
        app = create_app(Searcher(index, model, duplicates=duplicate_setting(args)), config)
        address, port = sock.getsockname()[:2]
        if not is_local(address):
            names = "" if config.allowed_hosts else "; clients must use a name given with --allowed-hosts"
            print(
                f"aladin: warning: listening on {address}: reachable from other machines{names}",
                file=sys.stderr,
            )
        shown = f"[{address}]" if ":" in address else address
        print(
            f"serving {len(index)} images from {args.index} on http://{shown}:{port} (API docs: /docs)",
            flush=True,
        )
        _log_service_events()
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


@contextmanager
def _listen(host: str, port: int) -> Iterator[socket.socket]:
    """A socket bound to (host, port) and listening, or one line saying why it cannot be."""
    if not 0 <= port <= 65535:
        raise AladinError(f"--port {port}: a port is a number from 0 to 65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise AladinError(f"--host {host}: cannot listen there ({exc.strerror or exc})") from None
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a listener still holds the port: refused
        try:
            sock.bind(address)
            sock.listen(2048)
        except OSError as exc:
            raise AladinError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        yield sock


def is_local(address: str) -> bool:
    """Whether a bound address is reachable only from this machine (127.x, ::1); 0.0.0.0, :: and others are not."""
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False


def _log_service_events() -> None:
    """The service's own log lines (a new index version served, a damaged file) on stderr, as they happen."""
    import logging

    logger = logging.getLogger("aladin.service")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _explain(args: argparse.Namespace) -> None:
    from aladin.data.images import load_image
    from aladin.encoders.image import build_image_encoder
    from aladin.encoders.text import build_text_encoder
    from aladin.index.encoding import model_device
    from aladin.service.heatmap import explain_image, render_heatmap

    image = load_image(args.image)
    model = load_model(args, args.index)
    device = model_device(model)
    explanation = explain_image(
        model,
        build_text_encoder(model.config.text_encoder, device),
        build_image_encoder(model.config.image_encoder, device),
        args.text,
        image,
        args.image,
    )
    out = render_heatmap(image, explanation, args.out, args.word)
    best = explanation.similarity.max(axis=1)
    tags = explanation.word_tags or [""] * len(best)
    print(
        "  ".join(
            f"{word} {value:.2f}" + (f" (tag {tag!r})" if tag else "")
            for word, value, tag in zip(explanation.words, best, tags, strict=True)
        )
    )
    if explanation.skipped:
        print(f"not drawn (stop words): {' '.join(explanation.skipped)}")
    print(f"alignment score {explanation.score:.3f}; heatmap written to {out}")
