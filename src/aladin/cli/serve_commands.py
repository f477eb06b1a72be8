"""`aladin serve` (the HTTP service and search page) and `aladin explain` (a match's heatmap as a PNG).

`register(subparsers)` adds the commands to the `aladin` parser; each sets `func`, so `args.func(args)` runs it.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

from aladin.cli.models import add_model_flags, load_model
from aladin.errors import AladinError


def register(subparsers: Any) -> None:
    """Add `serve` and `explain` to an argparse subparsers object."""
    from aladin.service.config import ServiceConfig

    defaults = ServiceConfig()
    p = subparsers.add_parser("serve", help="serve an index over HTTP: JSON API, search page, /docs")
    p.add_argument("--index", required=True, help="index folder")
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--queue-size",
        type=int,
        default=defaults.queue_size,
        help="model calls queued at most (more get 503)",
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
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        image_root=Path(args.image_root) if args.image_root else None,
    )
    model = load_model(args, args.index)
    index = SearchIndex.load(args.index, model, verify_checksums=not args.skip_checksums)
    app = create_app(Searcher(index, model), config)
    if not _is_loopback(args.host):
        print(f"aladin: warning: listening on {args.host}: reachable from other machines", file=sys.stderr)
    print(
        f"serving {len(index)} images from {args.index} on http://{args.host}:{args.port} (API docs: /docs)"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    print("  ".join(f"{word} {value:.2f}" for word, value in zip(explanation.words, best, strict=True)))
    if explanation.skipped:
        print(f"not drawn (stop words): {' '.join(explanation.skipped)}")
    print(f"alignment score {explanation.score:.3f}; heatmap written to {out}")
