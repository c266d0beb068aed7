"""Metrics: a name or a callable ``(outputs, labels) -> float``, called once with all outputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import NboptError


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray | None], float]
    greater_is_better: bool = True
    needs_labels: bool = True
    vs_baseline: bool = False  # compares with the baseline's outputs instead of labels

    def __call__(self, outputs: np.ndarray, labels: np.ndarray | None) -> float:
        return float(self.fn(outputs, labels))

    def drop(self, value: float, baseline: float) -> float:
        """How much worse than the baseline (positive = worse), whatever the direction."""
        return baseline - value if self.greater_is_better else value - baseline


def _classes(outputs: np.ndarray) -> np.ndarray:
    outputs = np.asarray(outputs)
    if outputs.ndim == 1 or outputs.shape[-1] == 1:  # one logit: binary
        return (outputs.reshape(len(outputs)) > 0).astype(np.int64)
    return outputs.reshape(len(outputs), -1).argmax(-1)


def accuracy(outputs, labels):
    return float(np.mean(_classes(outputs) == np.asarray(labels).reshape(-1)))


def top5(outputs, labels):
    top = np.argsort(-np.asarray(outputs).reshape(len(outputs), -1), axis=-1)[:, :5]
    return float(np.mean([lab in row for lab, row in zip(np.asarray(labels).reshape(-1), top)]))


def f1(outputs, labels):
    from sklearn.metrics import f1_score

    return float(f1_score(np.asarray(labels).reshape(-1), _classes(outputs), average="macro"))


def mse(outputs, labels):
    return float(np.mean((np.asarray(outputs).reshape(np.shape(labels)) - labels) ** 2))


def mae(outputs, labels):
    return float(np.mean(np.abs(np.asarray(outputs).reshape(np.shape(labels)) - labels)))


def cosine(outputs, reference):
    a = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    b = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)))


def agreement(outputs, reference):
    return float(np.mean(_classes(outputs) == _classes(reference)))


METRICS = {
    "accuracy": Metric("accuracy", accuracy),
    "top5": Metric("top5", top5),
    "f1": Metric("f1", f1),
    "mse": Metric("mse", mse, greater_is_better=False),
    "mae": Metric("mae", mae, greater_is_better=False),
    "cosine": Metric("cosine", cosine, needs_labels=False, vs_baseline=True),
    "agreement": Metric("agreement", agreement, needs_labels=False, vs_baseline=True),
}


def get_metric(metric: str | Callable | Metric) -> Metric:
    """A metric by name, or a callable (higher is better unless it has ``greater_is_better = False``)."""
    if isinstance(metric, Metric):
        return metric
    if callable(metric):
        name = getattr(metric, "__name__", "custom")
        return Metric(name, metric, greater_is_better=getattr(metric, "greater_is_better", True))
    if metric not in METRICS:
        raise NboptError(f"Unknown metric '{metric}'; known metrics: {', '.join(METRICS)} (or a callable "
                         "(outputs, labels) -> float).")
    return METRICS[metric]
