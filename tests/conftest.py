"""Shared fixtures: the digits data and a small CNN trained on it (seconds), offline settings."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    from nbopt.demo import digits_arrays

    return digits_arrays(seed=0)


@pytest.fixture(scope="session")
def digits_cnn(digits):
    pytest.importorskip("torch")
    from nbopt.demo import train_digits_cnn

    return train_digits_cnn(epochs=6, data=digits)


@pytest.fixture()
def store(tmp_path):
    return tmp_path / "store"
