from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The demo's run (synthetic cells), trained for a few seconds."""
    from medseg.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    run_demo(out, minutes=0.3)  # planning (timed probes) takes a few seconds of it; training needs the rest
    return out / "run"
