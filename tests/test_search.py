"""search="auto": the accuracy ladder climbs until a candidate fits max_accuracy_drop (fast tier, fake backend).

The model is the fake linear classifier with one weight made 1000x larger on a pixel that is always 0 in
digits: the float function is unchanged, but int8 with one scale per tensor rounds every other weight to
zero, and one scale per class still ruins that one class. Only keeping that class's column in float fits.
"""
import warnings

import numpy as np
import pytest

import nbopt
from nbopt.errors import NboptError

FAST = dict(progress=False, measure_memory=False, executor="inline")


@pytest.fixture
def outlier_model(fake_model, fake_data):
    from fake_backend import FakeModel

    xtr, _, xval, _ = fake_data
    dead = int(np.flatnonzero((xtr.max(0) == 0) & (xval.max(0) == 0))[0])
    w = fake_model.weights.copy()
    w[dead, 3] = 1000.0
    return FakeModel(w, fake_model.bias.copy())


def run(model, fake_data, tmp_path, **kw):
    xtr, ytr, xval, yval = fake_data
    return nbopt.optimize(model, calib=(xtr, ytr), eval=(xval, yval), backends=["fake-mixed"], store=tmp_path / "s",
                          **{**FAST, **kw})


def test_auto_climbs_until_a_candidate_fits(outlier_model, fake_data, tmp_path, quick_latency):
    events = []
    study = run(outlier_model, fake_data, tmp_path, max_accuracy_drop=0.01,
                callbacks=[lambda e, p: events.append((e, p)) if e.startswith("search") else None])
    rows = study.results
    # the first keep rung: one layer kept, and the recipe's own search (keep_float auto)
    assert list(rows["recipe"]) == ["baseline", "int8-dynamic", "int8-static", "int8-dynamic", "int8-static",
                                    "mixed-precision", "mixed-precision"]
    assert (rows["accuracy_drop"][1:5] > 0.01).all()  # every fully int8 trial broke the budget
    best = study.best(0.01)
    assert best.row["recipe"] == "mixed-precision" and best.row["accuracy_drop"] <= 0.01
    log = study.search_log
    assert list(log["rung"].dropna().unique()) == ["per-tensor int8", "per-channel", "keep 1 layer in float"]
    assert log["fits"].iloc[-2] and log["result"].iloc[-1].startswith("stopped")
    assert "per-channel" in log.loc[log["rung"] == "keep 1 layer in float", "why"].iloc[0] or \
        "sensitive" in log.loc[log["rung"] == "keep 1 layer in float", "why"].iloc[0]
    steps = [p["rung"] for e, p in events if e == "search_step"]
    assert steps == ["per-tensor int8", "per-channel", "keep 1 layer in float"]
    assert ("search_finished", {"total": 7}) in events


def test_auto_needs_fewer_evaluations_than_the_grid_for_the_same_best(outlier_model, fake_data, tmp_path,
                                                                      quick_latency):
    auto = run(outlier_model, fake_data, tmp_path / "a", max_accuracy_drop=0.01)
    grid_recipes = [r.recipe for r in auto.plan]  # every rung the ladder could have climbed
    grid = run(outlier_model, fake_data, tmp_path / "g", max_accuracy_drop=0.01, recipes=grid_recipes)
    assert grid.search_log.empty  # a recipe list runs as a grid
    assert len(auto.results) < len(grid.results)
    # the same best int8 candidate (the fake's fp16 file is smaller than int8 + a float column: npz overhead)
    fit = grid.results[(grid.results["accuracy_drop"] <= 0.01) & ~grid.results["recipe"].isin(["baseline", "fp16"])]
    assert auto.best(0.01).row["size_bytes"] == fit["size_bytes"].min()


def test_a_budget_nothing_meets_is_one_sentence_and_keeps_the_study(fake_model, fake_data, tmp_path,
                                                                    quick_latency):
    xtr, ytr, xval, yval = fake_data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = nbopt.optimize(fake_model, eval=(xval, yval), backends=["fake-mixed"], store=tmp_path / "s",
                               metric="cosine", max_accuracy_drop=0.0, **FAST)
    assert study.search_note.startswith("No candidate met max_accuracy_drop=0 (cosine); the closest: fake-mixed:")
    assert any(study.search_note in str(w.message) for w in caught)
    assert len(study.results) == 4 and study.best(0.0).row["recipe"] == "baseline"  # every trial is kept


def test_grid_keeps_todays_behaviour_and_unknown_search_is_one_sentence(fake_model, fake_data, tmp_path):
    with pytest.raises(NboptError, match="Unknown search 'ladder'; known searches: 'auto', 'grid'"):
        run(fake_model, fake_data, tmp_path, max_accuracy_drop=0.01, search="ladder")
    study = nbopt.Study(fake_model, calib=fake_data[:2], eval=fake_data[2:], backends=["fake"],
                        store=tmp_path / "g", max_accuracy_drop=0.01, search="grid", **FAST)
    assert [p.recipe.name for p in study.plan] == ["fp16", "int8-dynamic", "int8-static", "prune-unstructured"]


def test_the_panel_shows_each_rung_as_it_climbs(outlier_model, fake_data, tmp_path, quick_latency):
    from nbopt.widget import Panel

    xtr, ytr, xval, yval = fake_data
    study = nbopt.Study(outlier_model, calib=(xtr, ytr), eval=(xval, yval), backends=["fake-mixed"],
                        store=tmp_path / "s", max_accuracy_drop=0.01, **FAST)
    panel = Panel.follow(study)
    seen = []
    panel.observe(lambda change: seen.append(change["new"]), names="search")
    study.run()
    shown = [s for s in seen if s]
    assert [s.split(" (")[0] for s in shown] == ["search fake-mixed: step 1/8 per-tensor int8",
                                               "search fake-mixed: step 2/8 per-channel",
                                               "search fake-mixed: step 3/8 keep 1 layer in float"]
    assert "sensitive layers" in shown[-1]  # and why it is taken
    # the header line goes once the ladder ends, and the progress total becomes what ran
    assert panel.search == "" and panel.total == len(study.candidates) == 7
