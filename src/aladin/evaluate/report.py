"""Render evaluation results as a terminal table, markdown, JSON and recall@K curves.

All renderers share one row builder so the terminal, README tables and benchmark JSON never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aladin.errors import AladinError
from aladin.evaluate.metrics import ScorerResult, recall_from_ranks
from aladin.fileio import atomic_path, write_json

HEADERS = (
    "Scorer",
    "i2t R@1",
    "i2t R@5",
    "i2t R@10",
    "t2i R@1",
    "t2i R@5",
    "t2i R@10",
    "rsum",
    "ms/query",
)
_METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
FOLDS_PROTOCOL = "1k_folds"


def _sig3(value: float) -> str:
    """Three significant digits without scientific notation (0.0123, 1.23, 123, 1234)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _cells(label: str, metrics: dict[str, float], ms: str) -> list[str]:
    return [label, *(f"{metrics[key]:.1f}" for key in _METRIC_KEYS), ms]


def _row_blocks(results: Sequence[ScorerResult]) -> list[list[list[str]]]:
    """Rows for the full protocol, then (when any scorer has it) a block for the 1K-fold means."""
    blocks = [[_cells(r.name, r.metrics, _sig3(r.seconds_per_query * 1000.0)) for r in results]]
    folds = [
        _cells(f"{r.name} (1K folds)", r.protocols[FOLDS_PROTOCOL], "")
        for r in results
        if FOLDS_PROTOCOL in r.protocols
    ]
    if folds:
        blocks.append(folds)
    return blocks


def results_table(results: Sequence[ScorerResult], title: str) -> Table:
    """A rich table for the terminal; the 1K-fold block sits in its own section below the full results."""
    table = Table(title=title)
    table.add_column(HEADERS[0], justify="left")
    for header in HEADERS[1:]:
        table.add_column(header, justify="right")
    for index, block in enumerate(_row_blocks(results)):
        if index:
            table.add_section()
        for row in block:
            table.add_row(*row)
    return table


def print_results(results: Sequence[ScorerResult], title: str, console: Console | None = None) -> None:
    """Print the results table (to a fresh console unless the caller shares one)."""
    (console or Console()).print(results_table(results, title))


def results_markdown(results: Sequence[ScorerResult], title: str) -> str:
    """The same table as GitHub markdown, for READMEs and benchmark reports."""
    lines = [
        f"**{title}**",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|---" + "|---:" * (len(HEADERS) - 1) + "|",
    ]
    for block in _row_blocks(results):
        for row in block:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def write_results_json(
    path: str | Path, results: Sequence[ScorerResult], extra: dict[str, Any] | None = None
) -> None:
    """Write results (without rank arrays) plus run context such as config and timings, atomically."""
    write_json(path, {"results": [r.to_json() for r in results], "extra": extra or {}})


def plot_recall_curves(results: Sequence[ScorerResult], path: str | Path, max_k: int = 50) -> None:
    """Save a PNG of recall@K for K = 1..max_k, one panel per direction, one line per scorer."""
    if max_k < 1:
        raise AladinError(f"max_k must be >= 1, got {max_k}")
    ranked = [r for r in results if r.i2t_ranks is not None and r.t2i_ranks is not None]
    if not ranked:
        raise AladinError("no result carries rank arrays; evaluate with evaluate_scorer to plot curves")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ks = list(range(1, max_k + 1))
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, attr, title in ((axes[0], "i2t_ranks", "image → text"), (axes[1], "t2i_ranks", "text → image")):
        for result in ranked:
            recall = recall_from_ranks(getattr(result, attr), ks)
            ax.plot(ks, [recall[k] for k in ks], label=result.name)
        ax.set_title(title)
        ax.set_xlabel("K")
        ax.set_xlim(1, max(max_k, 2))
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("recall@K (%)")
    axes[1].legend(loc="lower right")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
