import numpy as np
import pytest

from nbopt.errors import NboptError
from nbopt.metrics import get_metric
from nbopt.recipes import parse_recipes


def test_list_values_expand_into_a_grid():
    recipes = parse_recipes(["fp16", {"int8-static": {"calibration": ["minmax", "entropy"], "per_channel": True}},
                             {"prune-structured": {"amount": [0.3, 0.5]}}])
    assert [(r.name, dict(r.params)) for r in recipes] == [
        ("fp16", {}),
        ("int8-static", {"calibration": "minmax", "per_channel": True}),
        ("int8-static", {"calibration": "entropy", "per_channel": True}),
        ("prune-structured", {"amount": 0.3}),
        ("prune-structured", {"amount": 0.5}),
    ]


def test_bad_recipe_spec_is_one_clear_error():
    with pytest.raises(NboptError, match="must be a mapping"):
        parse_recipes([{"int8-static": "entropy"}])
    with pytest.raises(NboptError, match="empty list"):
        parse_recipes([{"prune-structured": {"amount": []}}])


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(NboptError, match="known metrics: accuracy, top5, f1, mse, mae, cosine, agreement"):
        get_metric("acc")


def test_metrics_compute_what_they_say():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 5.0], [4.0, 0.0, 1.0]])
    labels = np.array([0, 1, 1, 2])
    assert get_metric("accuracy")(logits, labels) == 0.5
    assert get_metric("top5")(logits, labels) == 1.0
    assert get_metric("agreement")(logits, logits[[0, 1, 2, 2]]) == 0.75
    assert get_metric("cosine")(logits, logits) == pytest.approx(1.0)
    assert get_metric("mse")(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == 2.0
    assert get_metric("mae")(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == 1.0
    assert not get_metric("mse").greater_is_better
    assert get_metric("mse").drop(3.0, 2.0) == 1.0  # lower is better: a rise is a drop in quality
