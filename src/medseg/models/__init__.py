"""The model zoo: ``create_model``, ``list_models`` and the families they build."""

from medseg.models.registry import (create_model, create_model_from_spec, default_widths, get_entry, list_models,
                                    register_model, scaled_widths)
from medseg.models.summary import count_gflops, count_parameters, measure_latency

__all__ = [
    "count_gflops",
    "count_parameters",
    "create_model",
    "create_model_from_spec",
    "default_widths",
    "get_entry",
    "list_models",
    "measure_latency",
    "register_model",
    "scaled_widths",
]
