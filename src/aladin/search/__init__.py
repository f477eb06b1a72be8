"""Two-stage search over an index: kNN on global vectors, then alignment-head re-ranking; explanations."""

from aladin.search.explain import Explanation
from aladin.search.searcher import EncodedQueries, Hit, Searcher

__all__ = ["EncodedQueries", "Explanation", "Hit", "Searcher"]
