"""Checkpoint folders: config.json (format version, kind, config) + model.safetensors, never pickles."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from aladin import __version__
from aladin.config import CHECKPOINT_FORMAT_VERSION
from aladin.errors import CheckpointError
from aladin.fileio import atomic_directory, read_json, recover_directory
from aladin.migrations import SCHEMA_KEY, stored_version

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(
    directory: str | Path,
    kind: str,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    info: dict[str, Any] | None = None,
    schema_version: int | None = None,
) -> Path:
    """Write a checkpoint folder atomically: a crash leaves the previous checkpoint intact. `schema_version` is
    that of `config` (aladin.migrations), for configs that have one."""
    directory = Path(directory)
    header = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "kind": kind,
        "aladin_version": __version__,
        "config": config,
        "info": info or {},
    }
    if schema_version is not None:
        header[SCHEMA_KEY] = schema_version
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_directory(directory) as tmp:
        # bytes, not `save_file`: that creates the file 0600 whatever the user's umask
        weights = save(tensors, metadata={"config_digest": _config_digest(config)})
        (tmp / WEIGHTS_FILE).write_bytes(weights)
        (tmp / CONFIG_FILE).write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
    return directory


def read_checkpoint(directory: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict]:
    """Load (config, state_dict, info), refusing other format versions, kinds, or weights from another config."""
    directory = recover_directory(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint folder not found")
    header = read_json(directory / CONFIG_FILE, "checkpoint config")
    if not isinstance(header, dict) or "format_version" not in header:
        raise CheckpointError(f"{directory / CONFIG_FILE}: missing field 'format_version'")
    if header["format_version"] != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: format_version {header['format_version']} is not supported "
            f"(this aladin reads {CHECKPOINT_FORMAT_VERSION})"
        )
    if header.get("kind") != kind:
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: field 'kind' is {header.get('kind')!r}, expected {kind!r}"
        )
    config = header.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{directory / CONFIG_FILE}: field 'config' must be an object")
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file not found")
    try:
        state = load_file(str(weights))
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            digest = (handle.metadata() or {}).get("config_digest")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({exc})") from exc
    if digest != _config_digest(config):
        raise CheckpointError(f"{weights}: weights were saved with a different config than {CONFIG_FILE}")
    return config, state, header.get("info", {})


def config_schema_version(directory: str | Path) -> Any:
    """The schema version of a checkpoint's config (0 when written before versions existed)."""
    directory = recover_directory(directory)
    return stored_version(read_json(directory / CONFIG_FILE, "checkpoint config"))


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: Path | str) -> None:
    """load_state_dict with a one-line error when shapes or names do not match the config."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"{where}: weights do not match the model config ({detail[:300]})") from exc
