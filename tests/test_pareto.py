import itertools

import numpy as np
import pytest

from nbopt.pareto import pareto_mask


def brute_force(points, senses):
    """Definition, spelled out: i is on the front unless some j is no worse everywhere and better somewhere."""
    def better_eq(a, b, s):
        return a <= b if s == "min" else a >= b

    def strictly(a, b, s):
        return a < b if s == "min" else a > b

    out = []
    for i, p in enumerate(points):
        dominated = any(
            all(better_eq(q[k], p[k], senses[k]) for k in range(len(senses)))
            and any(strictly(q[k], p[k], senses[k]) for k in range(len(senses)))
            for j, q in enumerate(points) if j != i)
        out.append(not dominated)
    return np.array(out)


@pytest.mark.parametrize("senses", [("min", "max"), ("min", "min"), ("max", "max", "min")])
def test_pareto_matches_brute_force(senses):
    rng = np.random.default_rng(len(senses))
    for trial in range(50):
        # rounded values make ties and duplicates common, the cases a clever version gets wrong
        pts = np.round(rng.random((rng.integers(1, 25), len(senses))) * 4) / 4
        np.testing.assert_array_equal(pareto_mask(pts, senses), brute_force(pts.tolist(), senses))


def test_nan_rows_are_never_on_the_front():
    pts = np.array([[1.0, np.nan], [2.0, 0.5], [3.0, 0.9]])
    assert pareto_mask(pts, ["min", "max"]).tolist() == [False, True, True]


def test_duplicates_both_stay():
    pts = np.array([[1.0, 0.9], [1.0, 0.9], [2.0, 0.8]])
    assert pareto_mask(pts, ["min", "max"]).tolist() == [True, True, False]
