"""Retrieval evaluation: recall@K by the literature's rules, and reports of it (table, markdown, JSON, plots)."""

from aladin.evaluate.metrics import (
    ScorerResult,
    evaluate_protocols,
    evaluate_scorer,
    fold_metrics,
    i2t_ranks,
    recall_from_ranks,
    retrieval_metrics,
    t2i_ranks,
)
from aladin.evaluate.report import (
    plot_recall_curves,
    print_results,
    results_markdown,
    results_table,
    write_results_json,
)

__all__ = [
    "ScorerResult",
    "evaluate_protocols",
    "evaluate_scorer",
    "fold_metrics",
    "i2t_ranks",
    "plot_recall_curves",
    "print_results",
    "recall_from_ranks",
    "results_markdown",
    "results_table",
    "retrieval_metrics",
    "t2i_ranks",
    "write_results_json",
]
