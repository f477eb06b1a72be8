"""The re-rank policy, in one place: how many kNN candidates the alignment head re-scores by default, and how
much of the kNN score is fused into its score.

Training chooses it on validation and stores it in the student's checkpoint info; evaluation, search, the
service and the benchmarks read it from here and nowhere else, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The key of the setting in a checkpoint's info.
INFO_KEY = "rerank"
#: Depth for checkpoints saved before the setting was chosen on validation: the top 100 by the alignment head
#: alone (fusion 0). Written here once.
LEGACY_DEPTH = 100
#: Depths tried on validation below the recipe's deepest one (`RecipeConfig.rerank_k`).
CANDIDATE_DEPTHS = (10, 20, 50)
#: Weights of the kNN score fused into the alignment score, tried on validation.
CANDIDATE_FUSIONS = (0.0, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class RerankSetting:
    """A student's re-rank setting: chosen on validation (`validated`), or the legacy default."""

    depth: int
    fusion: float
    validated: bool
    #: Validation rsum of the best re-rank setting and of the matching head alone (validated settings only).
    val_rsum: float | None = None
    matching_val_rsum: float | None = None

    @property
    def helps(self) -> bool:
        """Re-ranking beat the matching head alone on validation (the legacy default always re-ranks)."""
        if not self.validated:
            return True
        return float(self.val_rsum or 0.0) > float(self.matching_val_rsum or 0.0)

    @property
    def default_depth(self) -> int:
        """What a search uses when it names no depth: the chosen depth only where it helps, else kNN alone."""
        return self.depth if self.helps else 0

    def resolve_depth(self, requested: int | None) -> int:
        """The depth a search with `requested` (None: the default) uses."""
        return self.default_depth if requested is None else requested

    def describe(self, depth: int | None = None) -> str:
        """How a results table names re-ranking at `depth` (default: the chosen depth)."""
        depth = self.depth if depth is None else depth
        text = f"re-rank top {depth}" + (f" (fused, weight {self.fusion:g})" if self.fusion else "")
        if self.validated and not self.helps:
            text += " [off by default: no gain on validation]"
        return text

    def to_info(self) -> dict[str, Any]:
        """The checkpoint-info form (its field names predate this class and stay as they are)."""
        return {
            "k": self.depth,
            "fusion": self.fusion,
            "val_rsum": self.val_rsum,
            "matching_val_rsum": self.matching_val_rsum,
        }

    @classmethod
    def chosen(cls, depth: int, fusion: float, val_rsum: float, matching_val_rsum: float) -> RerankSetting:
        return cls(int(depth), float(fusion), True, float(val_rsum), float(matching_val_rsum))

    @classmethod
    def legacy(cls) -> RerankSetting:
        return cls(LEGACY_DEPTH, 0.0, False)

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> RerankSetting:
        """The setting stored in a checkpoint's info; the legacy default for checkpoints without one."""
        stored = info.get(INFO_KEY)
        if not stored:
            return cls.legacy()
        return cls.chosen(stored["k"], stored["fusion"], stored["val_rsum"], stored["matching_val_rsum"])

    def into(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """`info` with this setting recorded."""
        return {**info, INFO_KEY: self.to_info()}


def has_setting(info: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's info records a validated setting."""
    return bool(info.get(INFO_KEY))


def depths_to_try(deepest: int) -> list[int]:
    """The validation grid's depths, up to the recipe's deepest."""
    return sorted({d for d in CANDIDATE_DEPTHS if d < deepest} | {deepest})
