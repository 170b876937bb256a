"""Distributed data parallel with PyTorch's own engine: `torchrun --nproc_per_node=N -m medseg train ...`.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; without them everything runs in one
process. Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable, produced by this program), in rank order."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def maximum(self, value: float) -> float:
        """The largest ``value`` over ranks (so every rank takes the same time-based decisions)."""
        if not self.enabled:
            return value
        device = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag``, on every rank."""
        return bool(self.all_gather(flag)[0]) if self.enabled else flag

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on every rank (so all ranks take the same branch)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item() > 0)


SINGLE_PROCESS = DistributedContext()


def init_distributed(timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group torchrun describes (idempotent); a single-process context otherwise. The collective
    timeout is long because rank 0 alone chooses post-processing at the end while the others wait; a dead rank
    still ends the job at once (torchrun watches its workers)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE_PROCESS
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(rank, world_size, local_rank)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parameter_checksum(model: torch.nn.Module) -> float:
    """A float64 sum over all parameters, to check that ranks hold the same weights."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in model.parameters()))
