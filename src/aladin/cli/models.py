"""Which model a command runs with: --model when given, else the one an index recorded, else the bundled
default model (trained on COCO photos; see src/aladin/model/bundled/*/MODEL_CARD.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from aladin.errors import AladinError


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="checkpoint folder of the model (default: the index's own, else the bundled model)"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")


def load_model(args: argparse.Namespace, index_dir: str | Path | None = None) -> Any:
    """--model; else, for an existing index, the model that built it (its recorded checkpoint folder, or the
    bundled default when that is what built it); else, with no index, the bundled default model."""
    from aladin.model.aladin import AladinModel
    from aladin.model.pretrained import load_default_model
    from aladin.pipeline import resolve_device

    device = resolve_device(args.device)
    if args.model is not None:
        return AladinModel.from_pretrained(args.model, device)
    if index_dir is None:
        return load_default_model(device)
    from aladin.index.manifest import MANIFEST_NAME

    if not (Path(index_dir) / MANIFEST_NAME).is_file():
        raise AladinError(f"{index_dir}: not an index folder (no {MANIFEST_NAME})")
    checkpoint, fingerprint = _recorded(Path(index_dir))
    loaders = [lambda: load_default_model(device)]
    if checkpoint:
        loaders.insert(0, lambda: AladinModel.from_pretrained(checkpoint, device))
    failed = ""
    for load in loaders:
        try:
            model = load()
        except (AladinError, OSError) as exc:
            # the recorded checkpoint's reason comes first
            failed = failed or f"; it cannot be loaded: {exc}"
            continue
        if model.fingerprint() == fingerprint:
            return model
    built = f" ({checkpoint}){failed}" if checkpoint else ""
    raise AladinError(f"--model is required: the checkpoint folder of the model that built the index{built}")


def _recorded(index_dir: Path) -> tuple[str, str | None]:
    """(checkpoint folder, fingerprint) of the model an index's manifest names; ("", None) when unreadable."""
    from aladin.fileio import read_json
    from aladin.index.manifest import MANIFEST_NAME

    try:
        recorded = read_json(index_dir / MANIFEST_NAME)["model"]
        return str(recorded["checkpoint"] or ""), str(recorded["fingerprint"])
    except (AladinError, KeyError, TypeError):
        return "", None
