"""Which model a command runs with: --model when given, else the one an index recorded, else the bundled
default model (trained on COCO photos; see src/aladin/model/bundled/*/MODEL_CARD.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="checkpoint folder of the model (default: the index's own, else the bundled model)"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")


def load_model(args: argparse.Namespace, index_dir: str | Path | None = None) -> Any:
    """--model; else, for an existing index, the model that built it (`aladin.index.index.model_for_index`);
    else, with no index, the bundled default model."""
    from aladin.index.index import model_for_index
    from aladin.model.aladin import AladinModel
    from aladin.model.pretrained import load_default_model
    from aladin.pipeline import resolve_device

    device = resolve_device(args.device)
    if args.model is not None:
        return AladinModel.from_pretrained(args.model, device)
    if index_dir is None:
        return load_default_model(device)
    return model_for_index(index_dir, device)


def warn_missing_files(index: Any) -> None:
    """Say at `search`/`serve` start-up how many indexed files are gone (their hits would show no picture)."""
    missing = index.meta.missing_files()
    if missing.missing:
        print(f"aladin: warning: {missing}", file=sys.stderr)


def add_duplicate_threshold_flag(parser: Any) -> None:
    """`--duplicate-threshold` for the commands whose searches collapse near-duplicates."""
    parser.add_argument(
        "--duplicate-threshold",
        type=float,
        metavar="T",
        help="least cosine of two near-duplicate photos when collapsing (default: the threshold the model "
        "records, measured for the bundled model; other models need one)",
    )


def duplicate_setting(args: Any) -> Any:
    """The `DuplicateConfig` of --duplicate-threshold, None when not given (the model's own is then used)."""
    from aladin.index.config import DuplicateConfig

    threshold = getattr(args, "duplicate_threshold", None)
    return None if threshold is None else DuplicateConfig(threshold=threshold)
