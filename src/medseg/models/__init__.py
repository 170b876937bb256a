"""The model zoo: ``create_model``, ``list_models`` and the families they build."""

from medseg.models.registry import create_model, create_model_from_spec, get_entry, list_models, register_model
from medseg.models.summary import count_gflops, count_parameters

__all__ = [
    "count_gflops",
    "count_parameters",
    "create_model",
    "create_model_from_spec",
    "get_entry",
    "list_models",
    "register_model",
]
