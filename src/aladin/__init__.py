"""aladin: cross-modal search with a fine-grained alignment head distilled into fast global vectors."""

__version__ = "0.1.0"
