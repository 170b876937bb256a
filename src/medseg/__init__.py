"""medseg: 2D medical image segmentation with the U-Net family.

The notebook API (the same functions the CLI calls)::

    import medseg
    config = medseg.load_config("configs/unetpp.yaml", ["data.root=../shared/data/busi"])
    result = medseg.train(config, "runs/x")
    summary = medseg.evaluate("runs/x", "../shared/data/busi", "runs/x/eval")
    mask = medseg.Predictor.from_run("runs/x").predict(image_array)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.2.0"

_API = {
    "Predictor": "medseg.inference.predictor",
    "train": "medseg.workflow",
    "evaluate": "medseg.inference.evaluate",
    "load_config": "medseg.config",
    "create_model": "medseg.models",
    "list_models": "medseg.models",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """Import the public API lazily, so ``import medseg`` stays cheap."""
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")
