"""How a step runs on a device: layout, mixed precision, backend settings (CUDA's are read, not run)."""

import pytest
import torch

from medseg.device import autocast_dtype, configure_backends, select_device, training_memory_format


def test_cpu_and_cuda_train_channels_last():
    assert training_memory_format("cpu") == torch.channels_last
    assert training_memory_format(torch.device("cuda", 0)) == torch.channels_last
    assert training_memory_format("meta") == torch.contiguous_format


@pytest.mark.parametrize("device, amp, cpu_bf16, expected", [
    ("cuda:0", True, False, torch.float16),
    ("cuda:0", False, True, None),  # bfloat16 is the CPU's choice, not CUDA's
    ("cpu", True, False, None),  # AMP is CUDA's float16
    ("cpu", False, True, torch.bfloat16),
    ("cpu", False, False, None),
])
def test_autocast_follows_the_device(device, amp, cpu_bf16, expected):
    assert autocast_dtype(device, amp, cpu_bf16) is expected


def test_backends_autotune_unless_deterministic():
    before = torch.backends.cudnn.benchmark
    try:
        configure_backends(deterministic=False)
        assert torch.backends.cudnn.benchmark is True
        configure_backends(deterministic=True)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = before


def test_a_missing_gpu_is_one_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(Exception, match="CUDA requested but not available"):
        select_device("cuda")
