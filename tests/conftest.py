"""Shared fixtures: one small built-in dataset per session (real shards, real text features)."""

import pytest

from scaling.builtin_data import DatasetInfo, write_builtin_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> DatasetInfo:
    return write_builtin_dataset(tmp_path_factory.mktemp("tiny") / "data", image_size=16,
                                 train_samples=512, val_samples=128, ood_samples=64,
                                 samples_per_shard=128, seed=0)
