"""The "none of these" rule a model record carries (runtime/trust.py computes its score): read
without torch, as every model record is."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

METHOD = "entropy"  # the one score there is; recorded so that a later one can be told apart
DEFAULT_ACCEPTANCE = 0.95


@dataclass(frozen=True)
class OodRule:
    """When an image counts as none of the classes: its score above `threshold`."""

    threshold: float
    acceptance: float = DEFAULT_ACCEPTANCE  # the share of validation images it accepted
    images: int = 0  # validation images it was fitted on
    method: str = METHOD

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> OodRule | None:
        """The rule a model record holds; None where it holds none (or one this version does
        not compute: a model saved by a later version keeps predicting, without a verdict)."""
        if not isinstance(raw, dict) or raw.get("method") != METHOD:
            return None
        try:
            rule = cls(
                threshold=float(raw["threshold"]),
                acceptance=float(raw.get("acceptance", DEFAULT_ACCEPTANCE)),
                images=int(raw.get("images", 0)),
            )
        except (KeyError, TypeError, ValueError):
            return None
        return rule if math.isfinite(rule.threshold) else None
