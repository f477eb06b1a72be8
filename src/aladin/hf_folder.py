"""Local Hugging Face model folders named "hf:PATH": where they are and what identifies their weights.

Feature caches, checkpoints and indexes record an encoder folder's identity through its encoder config's
`revision`, so that features or heads made with another folder, or with other weights in the same folder, are
refused with one line instead of being mixed. Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aladin.errors import AladinError

#: Prefix of encoder names that load a local `transformers` folder: "hf:PATH".
HF_PREFIX = "hf:"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_SAMPLE_BYTES = 1 << 20


def is_hf_name(name: str) -> bool:
    return name.startswith(HF_PREFIX)


def hf_folder(name: str, where: str) -> Path:
    """The folder of an "hf:PATH" name, or a one-line error saying how to get one (nothing is downloaded)."""
    folder = Path(name[len(HF_PREFIX) :]).expanduser()
    if not (folder / "config.json").is_file():
        raise AladinError(
            f"{where}: {str(folder)!r} is not a local Hugging Face model folder (no config.json); aladin never "
            f"downloads at run time: on a machine with internet run `huggingface-cli download "
            f"openai/clip-vit-base-patch32 --local-dir {folder}` (or another CLIP, SigLIP, DINOv2, ViT or BERT "
            "model) and copy the folder here"
        )
    return folder


def folder_revision(folder: Path, where: str) -> str:
    """Identity "<folder name>@config-<hash>/weights-<hash>": config.json's bytes, and each weights file's name, size and
    first and last MiB (cheap even for GB files, and different for any retrained weights in practice)."""
    config = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:12]
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
    if not files:
        raise AladinError(f"{where}: {folder} holds no weights file (*.safetensors or *.bin)")
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}:".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(_SAMPLE_BYTES))
            handle.seek(max(size - _SAMPLE_BYTES, 0))
            digest.update(handle.read(_SAMPLE_BYTES))
    return f"{folder.resolve().name}@config-{config}/weights-{digest.hexdigest()[:12]}"


def resolve_revision(name: str, revision: str, where: str) -> str:
    """The revision an encoder config records: the folder's own for a new "hf:" config, the stored one as is
    (checked against the folder when the encoder loads), "" for any other encoder."""
    if not is_hf_name(name):
        if revision:
            raise AladinError(f"{where}.revision: only hf: encoders record a revision, got {revision!r}")
        return ""
    return revision or folder_revision(hf_folder(name, f"{where}.name"), f"{where}.name")


def check_revision(name: str, revision: str, where: str) -> Path:
    """The folder of an "hf:" encoder, refused when its weights are not those `revision` recorded."""
    folder = hf_folder(name, f"{where}.name")
    found = folder_revision(folder, f"{where}.name")
    if revision and found != revision:
        raise AladinError(
            f"{where}: {folder} now holds {found}, but these features/weights were made with {revision}; use "
            "that folder, or re-extract features and retrain"
        )
    return folder
