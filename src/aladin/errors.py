"""One error type for everything a user can get wrong, so the CLI prints one clear line instead of a traceback."""

from __future__ import annotations


class AladinError(Exception):
    """A user-facing error: the message names the file/field and what was expected."""


class DataError(AladinError):
    """Malformed or missing dataset input (images, caption files, feature files)."""


class CheckpointError(AladinError):
    """A checkpoint or index that cannot be loaded as asked (missing, corrupt, wrong version or config)."""
