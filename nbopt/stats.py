"""Is the drop real? A paired bootstrap interval of a candidate's drop against its baseline, per-class
accuracy against the baseline, and the report's text for a drop with its interval. numpy only.

The interval resamples example indices with replacement; the candidate and its baseline are scored on the
*same* indices (paired), so what varies is only which examples are drawn. The metrics that are a mean over
examples (accuracy, top5, mse, mae, cosine, agreement) are scored once per example and resampled as means
(exact and fast); the language-model metrics that pool tokens (perplexity, next-token) are resampled as
ratios of per-example sums (a resample's value is its examples' summed NLL or matches over their scored
tokens, padding excluded, as the metric counts them); macro f1 is resampled from class counts; any other
callable is called on each resample. Every resample's drop is ``metric.drop`` of its two values, so a
relative drop (perplexity) is relative in the interval as in the point drop.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from . import metrics as M

NAN2 = (math.nan, math.nan)
PERCENT_METRICS = frozenset({"accuracy", "top5", "f1", "agreement", "next-token"})  # as the panel (logic.ts)
FALLBACK_RESAMPLES = 200  # resamples when the metric is called per resample (a callable)
FALLBACK_SECONDS = 0.5  # ... and the time they may take (a slow metric gets fewer, at least MIN_RESAMPLES)
MIN_RESAMPLES = 20
_CHUNK = 2_000_000  # indices drawn at once (memory: 16 MB of int64)


# ---------------------------------------------------------------------------------- the interval
def drop_interval(metric, outputs, base_outputs, labels, *, n_boot: int = 1000, level: float = 0.95,
                  seed: int = 0) -> tuple[float, float]:
    """The ``level`` percentile interval of ``metric.drop(candidate, baseline)`` (positive = worse) over
    ``n_boot`` paired bootstrap resamples of the examples. ``metric``: a ``Metric``, a name or a callable.
    For ``vs_baseline`` metrics the reference is the baseline's outputs (its own value: metric(base, base)).
    (nan, nan) with fewer than 2 examples, mismatched lengths or missing labels."""
    metric = M.get_metric(metric)
    out, base = np.asarray(outputs), np.asarray(base_outputs)
    lab = None if labels is None else np.asarray(labels)
    n = len(out)
    if n < 2 or len(base) != n or (not metric.vs_baseline and (lab is None or len(lab) != n)):
        return NAN2
    rng = np.random.default_rng(seed)
    sums = _per_example(metric, out, base, lab)
    if sums is not None and sums.count is None and not metric.relative:  # a mean: the mean of the drops
        drops = _resampled_means(np.asarray(metric.drop(sums.cand, sums.ref), dtype=float), n_boot, rng)
    elif sums is not None:
        drops = _resampled_ratios(metric, sums, n_boot, rng)
    elif metric.fn is M.f1:
        drops = _f1_drops(metric, out, base, lab, n_boot, rng)
    else:
        drops = _resampled_calls(metric, out, base, lab, min(n_boot, FALLBACK_RESAMPLES), rng)
    return _percentiles(drops, level)


def _indices(rng: np.random.Generator, n: int, n_boot: int):
    """Resampled index rows, in chunks; the same stream whatever the chunking."""
    step = max(1, _CHUNK // n)
    for start in range(0, n_boot, step):
        yield rng.integers(0, n, size=(min(step, n_boot - start), n))


def _resampled_means(per: np.ndarray, n_boot: int, rng) -> np.ndarray:
    return np.concatenate([per[idx].mean(axis=1) for idx in _indices(rng, len(per), n_boot)])


class _Sums(NamedTuple):
    """Per example, what a metric pools: value = finish(sum(cand) / sum(count)) over a resample's examples."""
    cand: np.ndarray  # the candidate's score (or numerator: summed NLL, matching tokens)
    ref: np.ndarray  # the baseline's
    count: np.ndarray | None = None  # what it is divided by (scored tokens); None: 1 per example (a mean)
    finish: Callable[[np.ndarray], np.ndarray] | None = None  # e.g. exp for perplexity
    empty: float = math.nan  # the metric's value on a resample with nothing to count


def _per_example(metric, out, base, lab) -> _Sums | None:
    """The per-example scores of a built-in metric (None for the others, or shapes it cannot take)."""
    scores = next((s for fn, s in _PER_EXAMPLE.items() if fn is metric.fn), None)
    if scores is None:
        return None
    try:
        sums = scores(out, base, lab)
    except ValueError:  # shapes the metric cannot take either
        return None
    return sums._replace(cand=np.asarray(sums.cand, dtype=float), ref=np.asarray(sums.ref, dtype=float))


def _resampled_ratios(metric, sums: _Sums, n_boot: int, rng) -> np.ndarray:
    """The drop of each resample, from the pooled sums of its examples (ratio of sums, not mean of ratios)."""
    count = np.ones(len(sums.cand)) if sums.count is None else np.asarray(sums.count, dtype=float)
    drops = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for idx in _indices(rng, len(sums.cand), n_boot):
            n = count[idx].sum(axis=1)
            values = []
            for part in (sums.cand, sums.ref):
                v = part[idx].sum(axis=1) / n
                v = sums.finish(v) if sums.finish is not None else v
                values.append(np.where(n > 0, v, sums.empty))
            drops.append(np.asarray(metric.drop(*values), dtype=float))
    return np.concatenate(drops)


def _hits(out, lab):
    return M._classes(out) == lab.reshape(-1)


def _top5_hits(out, lab):
    scores = out.reshape(len(out), -1)
    lab = lab.reshape(-1)
    if scores.shape[1] <= 5:
        return (lab >= 0) & (lab < scores.shape[1])
    top = np.argpartition(-scores, 4, axis=1)[:, :5]
    return (top == lab[:, None]).any(axis=1)


def _errors(power):
    def per_example(out, lab):
        diff = np.asarray(out, dtype=np.float64).reshape(lab.shape) - lab
        return (np.abs(diff) ** power).reshape(len(lab), -1).mean(axis=1)
    return per_example


def _cos(a, b):
    """Per example: the cosine with the baseline, or its mean over the positions of (N, T, C) outputs (as
    ``metrics.cosine``: every example has T positions, so the mean of these is the metric)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 3 and b.shape == a.shape:
        return np.mean(_cos(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])).reshape(a.shape[:2]), axis=1)
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    return np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _agreement(out, base, lab) -> _Sums:
    """Per example: agrees with the baseline, or the share of its positions that do for (N, T, C) outputs
    (as ``metrics.agreement``: every position, equal counts per example, so the mean of these is the metric)."""
    if np.ndim(out) == 3:
        same = np.asarray(out).argmax(-1) == np.asarray(base).argmax(-1)
        return _Sums(same.mean(axis=1), np.ones(len(same)))
    return _Sums(M._classes(out) == M._classes(base), np.ones(len(base)))


def _next_token(out, base, lab) -> _Sums:
    """Per example: positions whose top-1 equals the baseline's, and how many are scored: only those whose
    next token is not padding (as the study scores it: ``evaluator.score``), all without next-token labels."""
    out, base = np.asarray(out), np.asarray(base)
    M._check_logits(out, "next-token")
    same = out.argmax(-1) == base.argmax(-1)
    mask = M.scored_positions(lab, out)
    mask = np.ones(same.shape, dtype=bool) if mask is None else mask
    count = mask.sum(axis=1)
    return _Sums((same & mask).sum(axis=1), count, count, empty=1.0)  # nothing scored: the metric says 1.0


def _perplexity(out, base, lab) -> _Sums:
    """Per example: the summed NLL of its scored next tokens and their number; a resample's perplexity is
    exp(its NLL / its tokens), as ``metrics.perplexity`` pools them (not a mean of per-example perplexities)."""
    if lab is None:
        raise ValueError("perplexity needs the next tokens")
    nll_c, count = M.token_nll(out, lab)
    nll_b, _ = M.token_nll(base, lab)
    return _Sums(nll_c, nll_b, count, finish=np.exp)


_PER_EXAMPLE = {  # metric function -> (out, base, labels) -> the candidate's and the baseline's _Sums
    M.accuracy: lambda o, b, y: _Sums(_hits(o, y), _hits(b, y)),
    M.top5: lambda o, b, y: _Sums(_top5_hits(o, y), _top5_hits(b, y)),
    M.mse: lambda o, b, y: _Sums(_errors(2)(o, y), _errors(2)(b, y)),
    M.mae: lambda o, b, y: _Sums(_errors(1)(o, y), _errors(1)(b, y)),
    M.cosine: lambda o, b, y: _Sums(_cos(o, b), _cos(b, b)),
    M.agreement: _agreement,
    M.next_token: _next_token,
    M.perplexity: _perplexity,
}


def _f1_drops(metric, out, base, lab, n_boot, rng) -> np.ndarray:
    """Macro f1 (as scikit-learn: 2·TP / (true + predicted) per class present in the resample), from
    class counts of each resample."""
    lab = lab.reshape(-1)
    if len(lab) != len(out):
        return np.full(1, math.nan)
    classes, codes = np.unique(np.concatenate([lab, M._classes(out), M._classes(base)]), return_inverse=True)
    y, pc, pb = codes.reshape(3, -1)
    k = len(classes)
    drops = []
    for idx in _indices(rng, len(y), n_boot):
        true = _counts(y[idx], k)
        f_c, f_b = (_macro_f1(true, p[idx], y[idx], k) for p in (pc, pb))
        drops.append(metric.drop(f_c, f_b))
    return np.concatenate(drops)


def _counts(codes: np.ndarray, k: int) -> np.ndarray:
    """Per row of ``codes`` (values in [0, k]), how many of each value in [0, k)."""
    rows = codes.shape[0]
    flat = (codes + np.arange(rows)[:, None] * (k + 1)).ravel()
    return np.bincount(flat, minlength=rows * (k + 1)).reshape(rows, k + 1)[:, :k]


def _macro_f1(true, pred, y, k) -> np.ndarray:
    pred_n = _counts(pred, k)
    tp = _counts(np.where(pred == y, y, k), k)
    denom = true + pred_n
    f = np.divide(2 * tp, denom, out=np.zeros(denom.shape), where=denom > 0)
    return f.sum(axis=1) / (denom > 0).sum(axis=1)


def _resampled_calls(metric, out, base, lab, n_boot, rng) -> np.ndarray:
    """Call the metric on each resample (the candidate's and the baseline's), within a time budget."""
    drops: list[float] = []
    t0 = time.perf_counter()
    next_tokens = lab is not None and len(lab) == len(out)
    for idx in (row for rows in _indices(rng, len(out), n_boot) for row in rows):
        ref = base[idx] if metric.vs_baseline else lab[idx]
        # the positions to score, as the study's score() passes them (a metric that takes a mask: next-token)
        mask = M.scored_positions(lab[idx], out[idx]) if metric.vs_baseline and next_tokens else None
        try:
            drops.append(metric.drop(metric(out[idx], ref, mask=mask), metric(base[idx], ref, mask=mask)))
        except Exception:  # a user's metric that cannot take a resample: no interval
            return np.full(1, math.nan)
        if len(drops) >= MIN_RESAMPLES and time.perf_counter() - t0 > FALLBACK_SECONDS:
            break
    return np.asarray(drops)


def _percentiles(drops: np.ndarray, level: float) -> tuple[float, float]:
    drops = np.asarray(drops, dtype=float)
    finite = drops[np.isfinite(drops)]
    if len(finite) < max(MIN_RESAMPLES // 2, len(drops) // 2):
        return NAN2
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


# ----------------------------------------------------------------------------------- per class
def per_class(outputs, base_outputs, labels, class_names: Sequence | Mapping | None = None, *,
              top: int | None = None) -> list[dict]:
    """Per class of the labels: ``{"class", "n", "accuracy", "baseline", "drop"}`` (drop = baseline -
    accuracy), the biggest loss first (then the larger class); the first ``top`` if given. [] when the labels
    are not integer class ids or the outputs are not classification-shaped (2-D scores, one binary logit,
    or 1-D predicted labels)."""
    lab = _class_ids(labels)
    cand, ref = _predicted(outputs), _predicted(base_outputs)
    if lab is None or cand is None or ref is None or not len(lab) == len(cand[0]) == len(ref[0]) > 0:
        return []
    for _, n_classes in (cand, ref):
        if n_classes is not None and lab.max() >= n_classes:
            return []  # labels that are no class of these outputs
    hit_c, hit_b = cand[0] == lab, ref[0] == lab
    rows = []
    for k in np.unique(lab):
        mask = lab == k
        acc, base = float(hit_c[mask].mean()), float(hit_b[mask].mean())
        rows.append({"class": _class_name(int(k), class_names), "n": int(mask.sum()), "accuracy": acc,
                     "baseline": base, "drop": base - acc, "_k": int(k)})
    rows.sort(key=lambda r: (-r["drop"], -r["n"], r["_k"]))
    return [{k: v for k, v in r.items() if k != "_k"} for r in rows[:top]]


def _class_ids(labels) -> np.ndarray | None:
    if labels is None:
        return None
    lab = np.asarray(labels)
    if lab.ndim == 2 and lab.shape[1] == 1:
        lab = lab.reshape(-1)
    if lab.ndim != 1 or lab.dtype.kind not in "biu" or len(lab) == 0 or lab.min() < 0:
        return None
    return lab.astype(np.int64)


def _predicted(outputs) -> tuple[np.ndarray, int | None] | None:
    """(predicted class per example, number of classes the outputs can name: None for 1-D labels)."""
    out = np.asarray(outputs)
    if out.ndim > 2 and math.prod(out.shape[1:-1]) == 1:
        out = out.reshape(len(out), out.shape[-1])
    if out.ndim == 1 and out.dtype.kind in "biu":
        return out.astype(np.int64), None
    if out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1):
        return (out.reshape(-1) > 0).astype(np.int64), 2  # one logit: binary (as metrics._classes)
    if out.ndim == 2 and out.dtype.kind in "biuf":
        return out.argmax(axis=1), out.shape[1]
    return None


def _class_name(k: int, names) -> Any:
    if isinstance(names, Mapping):
        return names.get(k, k)
    if names is not None and 0 <= k < len(names):
        return names[k]
    return k


# ------------------------------------------------------------------------------ the row's columns
def row_columns(metric, outputs, base_outputs, labels, class_names=None, *, with_interval: bool = True,
                per_class_top: int | None = 50, seed: int = 0) -> dict:
    """This module's columns of a result row: ``accuracy_drop_low`` / ``accuracy_drop_high`` (None where no
    interval can be measured, or ``with_interval=False``: the baseline) and ``per_class`` (None when the
    data is not classification), ready to ``row.update``. Never raises: these columns are extra, so a
    problem leaves them empty with a warning instead of failing the row."""
    try:
        low, high = drop_interval(metric, outputs, base_outputs, labels, seed=seed) if with_interval else NAN2
        classes = per_class(outputs, base_outputs, labels, class_names, top=per_class_top)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"nbopt: no drop interval or per-class accuracy for this row ({type(exc).__name__}: {exc})")
        low, high, classes = *NAN2, []
    return {"accuracy_drop_low": low if math.isfinite(low) else None,
            "accuracy_drop_high": high if math.isfinite(high) else None,
            "per_class": classes or None}


def label_names(data) -> list | None:
    """The class names of a ``Data``'s label column when it is a ``datasets.ClassLabel``, else None."""
    features = getattr(getattr(data, "ds", None), "features", None) or {}
    names = getattr(features.get(getattr(data, "label_name", None) or ""), "names", None)
    return list(names) if names else None


# ----------------------------------------------------------------------------------- the report
def drop_text(row: Mapping, metric=None) -> str:
    """A row's drop with its interval, as the panel shows it: '0.19 pp worse [−0.41, +0.70]' (percentage
    points for accuracy, top5, f1, agreement, next-token; 3 significant digits otherwise); '' without a drop.
    ``metric``: the study's metric (a ``Metric`` or its name)."""
    drop = _number(row.get("accuracy_drop"))
    if drop is None:
        return ""
    pct = getattr(metric, "name", metric) in PERCENT_METRICS
    amount = _amount(abs(drop), pct)
    text = "same" if float(amount.split(" ")[0]) == 0 else f"{amount} {'worse' if drop > 0 else 'better'}"
    low, high = _number(row.get("accuracy_drop_low")), _number(row.get("accuracy_drop_high"))
    if low is None or high is None:
        return text
    return f"{text} [{_signed(low, pct)}, {_signed(high, pct)}]"


def _number(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _amount(a: float, pct: bool) -> str:
    return f"{a * 100:.2f} pp" if pct else f"{float(f'{a:.3g}'):g}"


def _signed(v: float, pct: bool) -> str:
    text = f"{abs(v) * 100:.2f}" if pct else f"{float(f'{abs(v):.3g}'):g}"
    if float(text) == 0:
        return text
    return ("+" if v > 0 else "\u2212") + text
