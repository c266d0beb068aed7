"""Every data form in DESIGN.md loads into the same batches; bad data gets one clear sentence."""
import numpy as np
import pandas as pd
import pytest

from nbopt import data as nd
from nbopt.errors import NboptError


@pytest.fixture(scope="module")
def small(digits):
    _, _, xval, yval = digits
    return xval[:120], yval[:120]


def first_batch(d, n=5):
    inputs, labels = next(d.batches(n))
    return inputs["input"], labels


def test_array_forms_agree(small):
    x, y = small
    d = nd.load((x, y))
    xb, yb = first_batch(d)
    np.testing.assert_array_equal(xb, x[:5])
    np.testing.assert_array_equal(yb, y[:5])
    assert d.single_input and d.has_labels and d.num_examples == 120
    bare = nd.load(x)
    assert not bare.has_labels and bare.fingerprint != d.fingerprint


def test_torch_dataset_and_loader_match_arrays(small):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    x, y = small
    tds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    ref = nd.load((x, y))
    for obj in (tds, DataLoader(tds, batch_size=32)):
        d = nd.load(obj)
        xb, yb = first_batch(d)
        np.testing.assert_array_equal(xb, x[:5])
        np.testing.assert_array_equal(yb, y[:5])
        assert d.fingerprint == ref.fingerprint  # same content, same store key


def test_dataframe_csv_parquet_json(small, tmp_path):
    x, y = small
    flat = x.reshape(len(x), -1)[:, :6]
    df = pd.DataFrame(flat, columns=[f"f{i}" for i in range(6)])
    df["label"] = y
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    df.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    for source in (df, tmp_path / "d.csv", tmp_path / "d.parquet", str(tmp_path / "d.jsonl")):
        d = nd.load(source)
        xb, yb = first_batch(d)
        np.testing.assert_allclose(xb, flat[:5], rtol=1e-6)
        np.testing.assert_array_equal(yb, y[:5])


def test_image_folder(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.fromarray(np.full((6, 5, 3), 40 * i, np.uint8)).save(tmp_path / label / f"{i}.png")
    d = nd.load(tmp_path)
    xb, yb = first_batch(d, 6)
    assert xb.shape == (6, 3, 6, 5) and xb.dtype == np.float32 and xb.max() <= 1.0
    assert sorted(set(yb.tolist())) == [0, 1]


def test_hf_dataset_with_named_inputs_and_dict_split():
    import datasets

    ids = np.arange(40, dtype=np.int64).reshape(10, 4)
    ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": np.ones_like(ids), "label": np.arange(10) % 2})
    d = nd.load(datasets.DatasetDict({"train": ds, "validation": ds.select(range(4))}))
    assert d.input_names == ["input_ids", "attention_mask"] and not d.single_input
    inputs, labels = next(d.batches(8))
    assert inputs["input_ids"].shape == (4, 4) and labels.tolist() == [0, 1, 0, 1]
    calib = nd.load(datasets.DatasetDict({"train": ds, "validation": ds.select(range(4))}), role="calib")
    assert calib.num_examples == 10


def test_dict_of_arrays_and_iterable_dataset_streams():
    import datasets

    ids = np.arange(40, dtype=np.int64).reshape(10, 4)
    d = nd.load({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert d.input_names == ["input_ids", "attention_mask"] and not d.has_labels
    stream = datasets.Dataset.from_dict({"input_ids": ids, "label": np.arange(10)}).to_iterable_dataset()
    s = nd.load(stream)
    assert s.streaming and len(s) == 10
    assert len(s.sample(4)) == 4


def test_tf_data(small):
    tf = pytest.importorskip("tensorflow")
    x, y = small
    for ds in (tf.data.Dataset.from_tensor_slices((x, y)), tf.data.Dataset.from_tensor_slices((x, y)).batch(16)):
        xb, yb = first_batch(nd.load(ds))
        np.testing.assert_array_equal(xb, x[:5])
        np.testing.assert_array_equal(yb, y[:5])


def test_calibration_sample_is_seeded_and_stratified(digits):
    x, y, _, _ = digits
    d = nd.load((x, y))
    a, b = d.sample(100, seed=1), d.sample(100, seed=1)
    np.testing.assert_array_equal(a.labels(), b.labels())
    assert d.sample(100, seed=2).fingerprint != a.fingerprint
    counts = np.bincount(a.labels(), minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11  # ~10 per class, as in the full set


@pytest.mark.parametrize("bad, message", [
    ("missing", "does not exist"),
    ("mismatch", "120 inputs but 7 labels"),
    ("empty", "no examples"),
    ("ragged", "differ in shape"),
    ("type", "cannot read eval data of type"),
    ("suffix", "Cannot read data file"),
])
def test_bad_data_gets_one_clear_error(bad, message, small, tmp_path):
    x, y = small
    (tmp_path / "d.xlsx").write_text("x")
    cases = {
        "missing": lambda: tmp_path / "nope.csv",
        "mismatch": lambda: (x, y[:7]),
        "empty": lambda: np.zeros((0, 3), np.float32),
        "ragged": lambda: [np.zeros(3), np.zeros(4)],
        "type": lambda: 42,
        "suffix": lambda: tmp_path / "d.xlsx",
    }
    obj = cases[bad]()
    if bad == "ragged":
        torch = pytest.importorskip("torch")
        obj = [torch.zeros(3), torch.zeros(4)]
        obj = torch.utils.data.DataLoader(obj, batch_size=None)
    with pytest.raises(NboptError, match=message) as err:
        nd.load(obj)
    assert "\n" not in str(err.value)
