"""Training plumbing shared by every training recipe, on the fake backend's numpy qat (fast tier): train=
data, the train/eval overlap warning, progress events, Stop within an epoch, divergence, the train part of
the store key, and the bad-input sentences."""
import threading
import warnings

import numpy as np
import pytest

import nbopt
from nbopt.errors import NboptError
from nbopt.evaluator import LatencySettings
from nbopt.training import TrainSettings, overlap, split_holdout

FAST = dict(measure_memory=False, progress=False, latency=LatencySettings(warmup=1, min_runs=3, min_seconds=0.0))


@pytest.fixture
def split(fake_data):
    """Disjoint train / calib / eval parts of digits (eval never trained on)."""
    xtr, ytr, xval, yval = fake_data
    return (xtr[:900], ytr[:900]), (xtr[900:], ytr[900:]), (xval, yval)


def study(fake_model, split, store, **kw):
    train, calib, ev = split
    args = dict(calib=calib, eval=ev, train=train, store=store, backends=["fake"], **FAST)
    return nbopt.Study(fake_model, **{**args, **kw})


def test_qat_trains_reports_progress_and_its_seconds(fake_model, split, store):
    events = []
    s = study(fake_model, split, store, recipes=[{"qat": {"epochs": 3, "lr": 0.05}}, "int8-dynamic"],
              callbacks=[lambda e, p: events.append((e, p))]).run()
    row = s.results.set_index("recipe").loc["qat"]
    assert row["status"] == "ok", row["error"]
    assert row["train_epochs"] == 3 and row["train_seconds"] > 0
    assert "qat 3/3 epochs on" in row["notes"]
    progress = [p for e, p in events if e == "training_progress"]
    assert [p["epoch"] for p in progress] == [1, 2, 3]
    assert all(p["name"] == "fake:qat(epochs=3, lr=0.05)" and np.isfinite(p["loss"]) for p in progress)
    assert progress[-1]["loss"] < progress[0]["loss"]  # it really trained
    # training starts from the model's weights: it stays as accurate as post-training int8
    assert row["accuracy"] >= s.results.set_index("recipe").loc["int8-dynamic", "accuracy"] - 0.02
    assert np.isnan(s.results.set_index("recipe").loc["int8-dynamic", "train_seconds"])


def test_train_data_is_part_of_the_training_rows_key_only(fake_model, split, store):
    first = study(fake_model, split, store, recipes=[{"qat": {"epochs": 1}}, "int8-dynamic"]).run()
    (xtr, ytr), calib, ev = split
    events = []
    study(fake_model, ((xtr[:800], ytr[:800]), calib, ev), store, recipes=[{"qat": {"epochs": 1}}, "int8-dynamic"],
          callbacks=[lambda e, p: events.append((e, p))]).run()
    cached = {p["recipe"]: p["cached"] for e, p in events if e == "candidate_started"}
    assert cached == {"baseline": True, "qat": False, "int8-dynamic": True}
    assert len(first.results) == 3


def test_training_recipe_without_train_data(fake_model, split, store):
    train, calib, ev = split
    with pytest.raises(NboptError, match=r"needs train=\.\.\.: a few thousand training examples"):
        nbopt.Study(fake_model, calib=calib, eval=ev, store=store, backends=["fake"], recipes=["qat"], **FAST)
    # a default sweep shows it as a skipped row that says so
    s = nbopt.Study(fake_model, calib=calib, eval=ev, store=store, backends=["fake-train"], **FAST).run()
    row = s.results.set_index("recipe").loc["qat"]
    assert row["status"] == "skipped" and "needs train=" in row["error"]


def test_eval_examples_in_train_warn(fake_model, split, store):
    train, calib, (xval, yval) = split
    leaky = (np.concatenate([train[0], xval[:25]]), np.concatenate([train[1], yval[:25]]))
    with pytest.warns(UserWarning, match=r"25 of \d+ eval examples also appear in train"):
        study(fake_model, (leaky, calib, (xval, yval)), store, recipes=["int8-dynamic"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        study(fake_model, split, store, recipes=["int8-dynamic"])  # disjoint: no warning


def test_train_inputs_must_match_the_model(fake_model, split, store):
    (xtr, ytr), calib, ev = split
    with pytest.raises(NboptError, match="Train examples of .input. have shape"):
        study(fake_model, ((xtr[:, :32], ytr), calib, ev), store, recipes=["qat"])


def test_stop_ends_a_training_run_within_an_epoch(fake_model, split, store):
    s = study(fake_model, split, store, recipes=[{"qat": {"epochs": 50, "batch_delay": 0.02}}])

    def stop_when_training(event, payload):
        if event == "candidate_started" and payload["recipe"] == "qat":
            threading.Timer(0.5, s.stop).start()

    s.on(stop_when_training)
    s.run()
    row = s.results.set_index("recipe").loc["qat"]
    assert row["status"] == "failed"
    assert "Stopped by the user during qat (epoch 1/50" in row["error"]
    assert s.stopped and row["build_seconds"] < 10


def test_diverging_training_is_a_failed_row_naming_the_epoch(fake_model, split, store):
    (xtr, ytr), calib, ev = split
    s = study(fake_model, split, store, recipes=[{"qat": {"epochs": 3, "lr": 1.0}}],
              train=(xtr * 1e30, ytr)).run()
    row = s.results.set_index("recipe").loc["qat"]
    assert row["status"] == "failed" and "Training diverged" in row["error"] and "at epoch 1" in row["error"]


def test_holdout_split_is_seeded_and_disjoint(fake_data):
    from nbopt.data import load

    xtr, ytr, _, _ = fake_data
    data = load((xtr, ytr))
    fit, held = split_holdout(data, seed=3)
    assert fit.num_examples + held.num_examples == data.num_examples and held.num_examples >= 16
    assert overlap(fit, held) == 0 or len(np.unique(xtr, axis=0)) < len(xtr)
    again, held2 = split_holdout(data, seed=3)
    assert held.fingerprint == held2.fingerprint
    assert np.array_equal(next(held.batches(8))[0]["input"], next(held2.batches(8))[0]["input"])
    tiny_fit, none = split_holdout(load((xtr[:20], ytr[:20])))
    assert none is None and tiny_fit.num_examples == 20
    assert TrainSettings.of({"epochs": 2, "lr": 0.1}).max_train_seconds == 300


def test_the_panel_shows_training_progress_and_training_time(fake_model, split, store):
    from nbopt.widget import Panel

    s = study(fake_model, split, store, recipes=[{"qat": {"epochs": 2}}])
    seen = []
    panel = Panel.follow(s)
    panel.observe(lambda change: seen.append(dict(change["new"])), names="training")
    s.run()
    assert [p["epoch"] for p in seen if p] == [1, 2] and seen[-1]["name"] == "fake:qat(epochs=2)"
    row = next(r for r in panel.rows if r["recipe"] == "qat")
    assert row["train_seconds"] > 0 and row["train_epochs"] == 2
