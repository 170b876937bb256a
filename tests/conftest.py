from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from medseg.data.synthetic import make_synthetic_dataset
from tests.helpers import tiny_config as make_tiny_config

torch.set_num_threads(max(1, min(2, len(os.sched_getaffinity(0)))))  # the cores this process may use (taskset)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_dataset(name: str, marker: str = "images") -> Path:
    """Path to ../shared/data/<name> (recognised by its ``marker`` entry), or skip the test with the reason."""
    path = SHARED_DATA / name
    if not (path / marker).exists():
        pytest.skip(f"shared dataset {name!r} not found at {path} (only present in the project's CI workspace)")
    return path


@pytest.fixture
def medseg_log():
    """The messages medseg's logger emits during a test (its handler writes to the stdout it first saw, which
    capsys cannot catch)."""
    from medseg.log import get_logger

    messages: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: messages.append(f"{record.levelname} {record.getMessage()}")
    logger = get_logger()
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n_images=12, size=48)


@pytest.fixture
def tiny_config(synthetic_data):
    config = make_tiny_config(synthetic_data)
    config.train.deterministic = True
    config.train.log_every = 1
    return config


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The demo's run (synthetic cells), trained for a few seconds; its data is in ``demo_run.parent / "data"``."""
    from medseg.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    run_demo(out, minutes=0.3)  # planning (timed probes) takes a few seconds of it; training needs the rest
    return out / "run"
