from __future__ import annotations

import pytest

from medseg.data.synthetic import make_synthetic_dataset
from tests.helpers import tiny_config as make_tiny_config


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n_images=12, size=48)


@pytest.fixture
def tiny_config(synthetic_data):
    config = make_tiny_config(synthetic_data)
    config.train.deterministic = True
    config.train.log_every = 1
    return config
