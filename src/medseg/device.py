"""The torch device a run uses: ``auto`` picks CUDA where there is one."""

from __future__ import annotations

import torch

from medseg.errors import MedsegError


def select_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA if available (the process's own GPU under torchrun), else CPU."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise MedsegError("train.device", f"invalid device {spec!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedsegError("train.device", "CUDA requested but not available")
    return device
