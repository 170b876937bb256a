from __future__ import annotations

import pytest

from medseg.config import Config
from medseg.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n_images=12, size=48)


@pytest.fixture
def tiny_config(synthetic_data):
    config = Config()
    config.data.root = str(synthetic_data)
    config.data.patch_size = 32
    config.model.widths = [4, 8, 16]
    config.train.epochs = 3
    config.train.steps_per_epoch = 2
    config.train.batch_size = 2
    config.train.deterministic = True
    config.train.log_every = 1
    return config
