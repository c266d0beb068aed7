"""Paired bootstrap intervals of the drop, per-class accuracy and the report's drop text (nbopt.stats)."""
import math
import time

import numpy as np
import pytest

import nbopt.stats

from nbopt.metrics import IGNORE_INDEX, METRICS, Metric, get_metric, scored_positions
from nbopt.stats import drop_interval, drop_text, label_names, per_class, row_columns

K = 10
LM = ("perplexity", "next-token")  # read language-model logits (N, T, V) and next tokens (N, T)
T, VOCAB = 10, 50


def classified(n, seed=0, accuracy=0.94):
    """Labels and baseline logits that are right on ~``accuracy`` of the ``n`` examples."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % K
    pred = np.where(rng.random(n) < accuracy, labels, (labels + 1 + rng.integers(0, K - 1, n)) % K)
    logits = rng.normal(0, 0.3, (n, K)).astype(np.float32)
    logits[np.arange(n), pred] += 3.0
    return logits, labels


def flip(logits, labels, count, classes=None, seed=1):
    """A candidate that gets ``count`` examples the baseline got right wrong (in ``classes`` if given)."""
    out = logits.copy()
    right = np.flatnonzero((logits.argmax(1) == labels) & (np.isin(labels, classes) if classes else True))
    idx = np.random.default_rng(seed).choice(right, count, replace=False)
    out[idx, labels[idx]] -= 10.0
    return out


def noisy(logits, scale, seed=2):
    return logits + np.random.default_rng(seed).normal(0, scale, logits.shape).astype(np.float32)


def sequences(n, seed=0):
    """Language-model logits (n, T, VOCAB) of a baseline that mostly predicts the next token, and the next
    tokens (n, T): the ids, IGNORE_INDEX where a sequence is padded (lengths 2..T, a third of them short)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (n, T))
    lengths = np.where(rng.random(n) < 1 / 3, rng.integers(2, T, n), T)
    labels = np.where(np.arange(T) < lengths[:, None], ids, IGNORE_INDEX)
    logits = rng.normal(0, 0.3, (n, T, VOCAB)).astype(np.float32)
    i, t = np.nonzero(np.arange(T - 1) < lengths[:, None] - 1)  # the positions whose next token is known
    logits[i, t, ids[i, t + 1]] += 3.0
    return logits, labels


def point_drop(metric, out, base, labels):
    """The row's drop, as the study scores it (next-token: only the positions whose next token is scored)."""
    if metric.vs_baseline:
        mask = scored_positions(labels, out)
        return metric.drop(metric(out, base, mask=mask), metric(base, base, mask=mask))
    return metric.drop(metric(out, labels), metric(base, labels))


def data_for(name, n=540):
    """(candidate, baseline, labels) for a metric: regression targets for mse / mae, logits and next tokens
    for the language-model metrics."""
    if name in LM:
        base, labels = sequences(n)
        return noisy(base, 1.0), base, labels
    base, labels = classified(n)
    if name in ("mse", "mae"):
        return noisy(base, 0.8, seed=3), base + np.float32(0.1), base
    return noisy(base, 1.0), base, labels


def called_per_resample(metric):
    """The same metric behind a plain function (no fast path), with its flags (relative_drop, takes_mask...)."""
    def fn(outputs, reference, **kw):
        return metric.fn(outputs, reference, **kw)
    fn.__dict__.update(metric.fn.__dict__)
    return Metric(metric.name, fn, greater_is_better=metric.greater_is_better, needs_labels=metric.needs_labels,
                  vs_baseline=metric.vs_baseline)


@pytest.mark.parametrize("name", list(METRICS))
def test_the_interval_contains_the_point_drop(name):
    metric = get_metric(name)
    out, base, labels = data_for(name)
    low, high = drop_interval(metric, out, base, labels)
    assert low <= point_drop(metric, out, base, labels) <= high
    assert low < high


@pytest.mark.parametrize("name", list(METRICS))
def test_the_fast_paths_equal_calling_the_metric_on_each_resample(name, monkeypatch):
    """Each built-in metric's vectorised resampling gives what calling it per resample gives (same seed)."""
    monkeypatch.setattr(nbopt.stats, "FALLBACK_SECONDS", 60.0)  # all 200 resamples, however slow sklearn is
    metric = get_metric(name)
    out, base, labels = data_for(name, n=300)
    wrapped = called_per_resample(metric)
    assert wrapped.relative == metric.relative
    fast = drop_interval(metric, out, base, labels, n_boot=200, seed=5)
    slow = drop_interval(wrapped, out, base, labels, n_boot=200, seed=5)
    assert fast == pytest.approx(slow, rel=1e-6, abs=1e-9)  # mse / mae: float32 sums
    assert fast[0] < fast[1]


@pytest.mark.parametrize("name", ["agreement", "cosine", "next-token"])
def test_the_fast_paths_compare_sequence_outputs_per_position(name, monkeypatch):
    """On (N, T, C) outputs agreement and cosine compare each position (not one flattened vector per
    example), next-token only those whose next token is scored; the interval follows (without next tokens:
    every position)."""
    monkeypatch.setattr(nbopt.stats, "FALLBACK_SECONDS", 60.0)
    metric = get_metric(name)
    base, labels = sequences(300)
    out = noisy(base, 1.0)
    for lab in (labels, None):
        fast = drop_interval(metric, out, base, lab, n_boot=200, seed=5)
        slow = drop_interval(called_per_resample(metric), out, base, lab, n_boot=200, seed=5)
        assert fast == pytest.approx(slow, rel=1e-6, abs=1e-9)
        assert fast[0] <= point_drop(metric, out, base, lab) <= fast[1]


def test_next_token_interval_ignores_padding_positions():
    """A candidate that differs from the baseline only where the next token is padding (or unknown: the last
    position) has lost nothing: its interval is exactly 0, as its point drop."""
    base, labels = sequences(540)
    scored = scored_positions(labels, base)
    assert (~scored[:, :-1]).any()  # there is padding to ignore
    out = base.copy()
    out[~scored] = -base[~scored]  # another top-1 at every position that is not scored
    metric = get_metric("next-token")
    assert point_drop(metric, out, base, labels) == 0.0
    assert drop_interval(metric, out, base, labels) == (0.0, 0.0)
    low, high = drop_interval(metric, out, base, None)  # every position counted: a real drop
    assert 0 < low <= high


def test_perplexity_interval_is_of_the_relative_drop():
    """A candidate whose every scored next token is 1.1 times less likely has a perplexity 10 % higher, in
    every resample: the interval is 0.10 (relative, as the point drop), not 0.10 x the baseline's perplexity."""
    base, labels = sequences(540)
    logp = base.astype(np.float64) - np.log(np.exp(base.astype(np.float64)).sum(-1, keepdims=True))
    out = logp.copy()
    scored = scored_positions(labels, base)
    i, t = np.nonzero(scored)
    target = labels[i, t + 1]
    spare = (target + 1) % VOCAB  # takes the probability the target loses, so each row still sums to 1
    p_target, p_spare = np.exp(logp[i, t, target]), np.exp(logp[i, t, spare])
    out[i, t, target] = np.log(p_target / 1.1)
    out[i, t, spare] = np.log(p_spare + p_target - p_target / 1.1)
    metric = get_metric("perplexity")
    assert metric(base, labels) > 2  # a perplexity whose scale would show in an absolute drop
    assert point_drop(metric, out, base, labels) == pytest.approx(0.1, rel=1e-9)
    assert drop_interval(metric, out, base, labels) == pytest.approx((0.1, 0.1), rel=1e-9)


@pytest.mark.parametrize("name", list(METRICS))
def test_identical_outputs_give_zero(name):
    _, base, labels = data_for(name)
    assert drop_interval(name, base, base.copy(), labels) == (0.0, 0.0)


def test_more_examples_give_a_narrower_interval():
    widths = []
    for n in (540, 5400):
        base, labels = classified(n)
        low, high = drop_interval("accuracy", flip(base, labels, n // 20), base, labels)
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_one_flip_in_540_is_noise_sixty_are_a_real_drop():
    base, labels = classified(540)
    low, high = drop_interval("accuracy", flip(base, labels, 1), base, labels)
    assert low <= 0 <= high
    low, high = drop_interval("accuracy", flip(base, labels, 60), base, labels)
    assert 0 < low <= 60 / 540 <= high


def test_lower_is_better_metrics_drop_with_the_right_sign():
    base, labels = classified(540)
    target = base + np.float32(0.1)
    worse = drop_interval("mse", noisy(base, 0.8), base, target)
    better = drop_interval("mse", noisy(target, 0.01), base, target)
    assert 0 < worse[0] <= worse[1]
    assert better[0] <= better[1] < 0


def test_deterministic_per_seed():
    base, labels = classified(540)
    out = noisy(base, 1.5)
    for name in ("accuracy", "f1", "cosine"):
        assert drop_interval(name, out, base, labels, seed=3) == drop_interval(name, out, base, labels, seed=3)
        assert drop_interval(name, out, base, labels, seed=3) != drop_interval(name, out, base, labels, seed=4)


def test_callables_and_what_has_no_interval():
    base, labels = classified(540)
    out = flip(base, labels, 30)

    def err_rate(outputs, labels):
        return float(np.mean(outputs.argmax(1) != labels))
    err_rate.greater_is_better = False
    low, high = drop_interval(err_rate, out, base, labels)
    assert 0 < low <= 30 / 540 <= high
    assert all(math.isnan(v) for v in drop_interval("accuracy", out[:1], base[:1], labels[:1]))
    assert all(math.isnan(v) for v in drop_interval("accuracy", out, base, None))
    assert all(math.isnan(v) for v in drop_interval("accuracy", out, base[:-1], labels))

    def fussy(outputs, labels):
        if np.bincount(labels, minlength=K).min() != 54:
            raise ValueError("needs the whole set")
        return 1.0
    assert all(math.isnan(v) for v in drop_interval(fussy, out, base, labels))


def test_accuracy_is_fast_on_ten_thousand_examples():
    base, labels = classified(10_000)
    out = noisy(base, 1.0)
    t0 = time.perf_counter()
    drop_interval("accuracy", out, base, labels)
    drop_interval("cosine", out, base, labels)
    assert time.perf_counter() - t0 < 2.0


def test_per_class_shows_the_class_that_lost_most_first():
    base, labels = classified(500, accuracy=1.0)  # 10 classes of 50, all right
    out = flip(base, labels, 5, classes=[3])  # 5 of class 3's 50 examples wrong: -10 pp there, -1 pp overall
    rows = per_class(out, base, labels, class_names=[f"digit {k}" for k in range(K)])
    assert get_metric("accuracy").drop(get_metric("accuracy")(out, labels), 1.0) == pytest.approx(0.01)
    assert rows[0] == {"class": "digit 3", "n": 50, "accuracy": 0.9, "baseline": 1.0, "drop": pytest.approx(0.1)}
    assert [r["drop"] for r in rows[1:]] == [0.0] * 9
    assert len(per_class(out, base, labels, top=3)) == 3
    assert per_class(out, base, labels)[0]["class"] == 3


def test_per_class_takes_predicted_labels_and_binary_logits():
    labels = np.array([0, 0, 1, 1, 2, 2])
    rows = per_class(np.array([0, 1, 1, 1, 2, 2]), labels.copy(), labels, class_names={0: "cat"})
    assert rows[0]["class"] == "cat" and rows[0]["drop"] == 0.5
    binary = per_class(np.array([[2.0], [-1.0], [-3.0]]), np.array([[2.0], [1.0], [-3.0]]), np.array([1, 1, 0]))
    assert binary[0] == {"class": 1, "n": 2, "accuracy": 0.5, "baseline": 1.0, "drop": 0.5}


def test_per_class_is_empty_when_it_is_not_classification():
    logits, labels = classified(40)
    assert per_class(logits, logits, labels.astype(np.float32)) == []  # regression targets
    assert per_class(logits, logits, None) == []
    assert per_class(logits.reshape(40, 2, 5), logits.reshape(40, 2, 5), labels) == []
    assert per_class(logits, logits[:-1], labels) == []
    assert per_class(logits[:, :5], logits[:, :5], labels) == []  # labels beyond the outputs' classes


def test_drop_text_formats_the_drop_and_its_interval():
    row = {"accuracy_drop": 0.0019, "accuracy_drop_low": -0.0041, "accuracy_drop_high": 0.007}
    assert drop_text(row, get_metric("accuracy")) == "0.19 pp worse [\u22120.41, +0.70]"
    assert drop_text({**row, "accuracy_drop_low": None}, "accuracy") == "0.19 pp worse"
    assert drop_text({"accuracy_drop": -0.02, "accuracy_drop_low": -0.031, "accuracy_drop_high": -0.0049},
                     "mse") == "0.02 better [\u22120.031, \u22120.0049]"
    assert drop_text({"accuracy_drop": 0.0, "accuracy_drop_low": 0.0, "accuracy_drop_high": 0.0},
                     "accuracy") == "same [0.00, 0.00]"
    assert drop_text({"accuracy_drop": float("nan")}, "accuracy") == ""
    assert drop_text({}, "accuracy") == ""


def test_row_columns_are_ready_for_the_row():
    base, labels = classified(540)
    cols = row_columns("accuracy", flip(base, labels, 60), base, labels, class_names=list("abcdefghij"))
    assert set(cols) == {"accuracy_drop_low", "accuracy_drop_high", "per_class"}
    assert 0 < cols["accuracy_drop_low"] < cols["accuracy_drop_high"]
    assert cols["per_class"][0]["drop"] > 0 and cols["per_class"][0]["class"] in "abcdefghij"
    baseline = row_columns("accuracy", base, base, labels, with_interval=False, per_class_top=3)
    assert baseline["accuracy_drop_low"] is None and len(baseline["per_class"]) == 3
    regression = row_columns("mse", base, base + 1, base)
    assert regression["per_class"] is None and regression["accuracy_drop_low"] == pytest.approx(-1.0)
    assert row_columns("accuracy", base[:1], base[:1], labels[:1])["accuracy_drop_high"] is None
    with pytest.warns(UserWarning, match="no drop interval"):  # a problem leaves the columns empty
        broken = row_columns("accuracy", base, base, labels, per_class_top="ten")
    assert broken == {"accuracy_drop_low": None, "accuracy_drop_high": None, "per_class": None}


def test_label_names_come_from_a_class_label_column():
    import datasets

    from nbopt.data import load

    features = datasets.Features({"x": datasets.Sequence(datasets.Value("float32")),
                                  "label": datasets.ClassLabel(names=["cat", "dog"])})
    data = load(datasets.Dataset.from_dict({"x": [[0.0], [1.0]], "label": [0, 1]}, features=features))
    assert label_names(data) == ["cat", "dog"]
    assert label_names(load((np.zeros((2, 1), np.float32), np.array([0, 1])))) is None
