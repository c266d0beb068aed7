"""What every backend's ``mixed-precision`` shares (framework-free): how a trial is scored on calibration
data, how many of the most sensitive layers to try keeping in float, and which trial to choose.

A backend's handler measures per-layer sensitivity (only that layer quantized, the model's output compared
with float on calibration data), builds a few trials (the quantizer's options, then the k most sensitive
layers kept in float) in its own runtime, scores each with ``CalibScore`` and keeps ``choose``'s pick.
Scoring uses the study's own metric where calibration data can feed it (a baseline-relative metric, or a
labelled metric with labelled calibration data); otherwise the relative output error against float.
Eval data is never used: the choice is made before the candidate is measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .metrics import scored_positions

COUNTING = ("accuracy", "top5", "f1", "agreement", "next-token")  # move by whole examples (or tokens)


def fidelity(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Relative L2 error, mean per-example cosine and max abs diff of ``out`` against ``ref``."""
    ref = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    out = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
    rel = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12))
    num = (ref * out).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = float(np.mean(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)))
    return {"rel_error": rel, "cosine": cos, "max_abs_diff": float(np.abs(out - ref).max())}


@dataclass
class CalibScore:
    """Scores a trial's outputs on calibration data: ``loss`` is lower-is-better whatever the metric.

    ``metric`` is the study's metric name (None for a custom callable: it may not be picklable into the
    worker, and it may need labels the calibration data lacks)."""

    ref: np.ndarray  # float model's outputs on the calibration examples
    labels: np.ndarray | None = None
    metric: str | None = None

    def __post_init__(self) -> None:
        from .metrics import METRICS

        m = METRICS.get(self.metric) if self.metric else None
        usable = m is not None and (m.vs_baseline or (self.labels is not None and not m.vs_baseline))
        self._metric = m if usable else None

    @property
    def by(self) -> str:
        """What the choice was made by, for the row's notes."""
        return (f"the study's metric ({self._metric.name}) on calibration data" if self._metric
                else "relative output error against float on calibration data")

    @property
    def noise(self) -> float:
        """The smallest loss difference that means something: one example's worth for metrics that count
        examples (accuracy, top5, f1, agreement), one token's worth where they count positions of sequence
        outputs (agreement, next-token), none for continuous ones (cosine, mse, perplexity, relative error)."""
        if self._metric is None or self._metric.name not in COUNTING:
            return 0.0
        if np.ndim(self.ref) == 3 and self._metric.name in ("agreement", "next-token"):
            mask = scored_positions(self.labels, self.ref) if self._metric.name == "next-token" else None
            counted = int(mask.sum()) if mask is not None else self.ref.shape[0] * self.ref.shape[1]
            return 1.0 / max(counted, 1)
        return 1.0 / max(len(self.ref), 1)

    def value(self, out: np.ndarray) -> float:
        """The metric's value (or the relative error) for these outputs."""
        if self._metric is None:
            return fidelity(self.ref, out)["rel_error"]
        return self._score(np.asarray(out).reshape(np.shape(self.ref)))

    def _score(self, out: np.ndarray) -> float:
        if self._metric.vs_baseline:  # next-token skips the positions whose next token is padding
            return self._metric(out, self.ref, mask=scored_positions(self.labels, self.ref))
        return self._metric(out, self.labels)

    def loss(self, out: np.ndarray) -> float:
        """Lower is better: the metric's drop against float (or the relative error), plus a tie-breaker."""
        rel = fidelity(self.ref, out)["rel_error"]
        if self._metric is None:
            return rel
        base = self._score(np.asarray(self.ref))
        # the relative error breaks ties between trials the metric cannot tell apart (e.g. agreement 1.0)
        return self._metric.drop(self.value(out), base) + 1e-3 * rel


def keep_float_steps(params: Sequence[int], budget_params: float, max_trials: int = 5) -> list[int]:
    """How many of the most sensitive layers (``params`` = their weight counts, most sensitive first) to
    try keeping in float, within the parameter budget: small steps first, then the largest allowed."""
    cum = np.cumsum(np.asarray(params, dtype=np.float64)) if len(params) else np.array([])
    allowed = int((cum <= budget_params).sum())
    steps = [k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32) if k <= allowed]
    if allowed and allowed not in steps and allowed < 32:
        steps.append(allowed)
    steps = sorted(set(steps))
    if len(steps) > max_trials:
        steps = steps[: max_trials - 1] + [steps[-1]]
    return steps


def choose(trials: list[dict[str, Any]], tolerance: float = 0.05, noise: float = 0.0) -> dict[str, Any]:
    """The smallest trial (then the one keeping fewest layers) that gets within ``tolerance`` of the best
    trial's ``loss``, measured on the spread between the worst and the best: a trial that gives 95 % of the
    possible gain is preferred to a bigger or slower one. Differences below ``noise`` (one calibration
    example's worth of a counting metric: ``CalibScore.noise``) do not count: keeping layers in float that
    changes one prediction is not worth its bytes. Each trial has ``loss``, ``size`` and ``k``, and may have
    ``slow`` (0 = fastest way of running the kept layers): among trials of the same size (within 0.2 %,
    block scales and attributes aside) the fastest wins, then the one keeping fewest layers."""
    losses = [t["loss"] for t in trials]
    best, worst = min(losses), max(losses)
    slack = max(tolerance * (worst - best), noise) + 1e-12
    good = [t for t in trials if t["loss"] <= best + slack]
    smallest = min(t["size"] for t in good)
    return min((t for t in good if t["size"] <= smallest * 1.002), key=lambda t: (t.get("slow", 0), t["k"], t["size"]))
