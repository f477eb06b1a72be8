"""Two-stage search over an index: kNN on global vectors, then alignment-head re-ranking; explanations."""

from aladin.search.searcher import EncodedQueries, Explanation, Hit, Searcher

__all__ = ["EncodedQueries", "Explanation", "Hit", "Searcher"]
