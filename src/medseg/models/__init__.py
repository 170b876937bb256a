"""The model zoo: ``create_model``, ``list_models`` and the families they build."""

from medseg.models.registry import (ModelSpec, create_model, default_widths, get_entry, list_models, register_model,
                                    scaled_widths)
from medseg.models.summary import count_gflops, count_parameters, measure_latency

__all__ = [
    "ModelSpec",
    "count_gflops",
    "count_parameters",
    "create_model",
    "default_widths",
    "get_entry",
    "list_models",
    "measure_latency",
    "register_model",
    "scaled_widths",
]
