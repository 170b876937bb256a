"""Model size and cost: parameter counts and FLOPs, for `medseg models` and comparison tables."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics are buffers and do not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_gflops(model: nn.Module, in_channels: int, size: tuple[int, int] = (256, 256)) -> float:
    """Forward GFLOPs for one ``in_channels x H x W`` image (1 multiply-add = 2 FLOPs), in eval mode."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, in_channels, *size))
    model.train(was_training)
    return counter.get_total_flops() / 1e9


def measure_latency(model: nn.Module, in_channels: int, size: tuple[int, int] = (256, 256),
                    device: str | torch.device = "cpu", repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds of one batch-1 forward pass in eval mode (``inference_mode``)."""
    import statistics
    import time

    was_training = model.training
    model.eval()
    x = torch.randn(1, in_channels, *size, device=device)
    timings = []
    with torch.inference_mode():
        for index in range(warmup + repeats):
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            if index >= warmup:
                timings.append(time.perf_counter() - start)
    model.train(was_training)
    return statistics.median(timings)
