"""Pareto maths, pure and plot-free: which points no other point beats on every objective."""
from __future__ import annotations

from typing import Sequence

import numpy as np

# objective name -> (results column, sense); "accuracy"'s sense follows the metric.
OBJECTIVES = {
    "size": ("size_bytes", "min"),
    "latency": ("latency_ms", "min"),
    "memory": ("peak_memory_mb", "min"),
    "accuracy": ("accuracy", "max"),
}


def pareto_mask(points: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    """Boolean mask of non-dominated rows. ``senses[j]`` is "min" or "max" for column j.

    A row is dominated when another row is at least as good on every column and strictly better on one.
    Identical rows do not dominate each other. Rows with NaN are never on the front.
    """
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return np.zeros(len(pts), dtype=bool)
    signs = np.array([1.0 if s == "min" else -1.0 for s in senses])
    cost = pts * signs  # lower is better everywhere
    valid = ~np.isnan(cost).any(axis=1)
    mask = valid.copy()
    for i in np.flatnonzero(valid):
        others = cost[valid]
        dominated = np.all(others <= cost[i], axis=1) & np.any(others < cost[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def resolve(objectives: Sequence[str], greater_is_better: bool) -> list[tuple[str, str]]:
    """[(column, sense)] for objective names; raises on an unknown name."""
    from .errors import NboptError

    out = []
    for name in objectives:
        if name not in OBJECTIVES:
            raise NboptError(f"Unknown objective '{name}'; known objectives: {', '.join(OBJECTIVES)}.")
        column, sense = OBJECTIVES[name]
        if name == "accuracy" and not greater_is_better:
            sense = "min"
        out.append((column, sense))
    return out
