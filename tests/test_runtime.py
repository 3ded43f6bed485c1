"""Device/batching runtime: out-of-memory retry, device fallback, precision resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import _runtime
from sktransfer.exceptions import DeviceWarning


class _SmallMemoryDevice(nn.Module):
    """Behaves like a real layer but raises the out-of-memory error that CUDA raises when a
    batch is larger than ``limit`` (no GPU here, so the error is produced on purpose)."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        if len(x) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.lin(x)


def test_out_of_memory_halves_the_batch_and_reports_it():
    x = torch.randn(37, 4)
    module = _SmallMemoryDevice(limit=5)
    with pytest.warns(DeviceWarning, match="retrying with batch size"):
        out = _runtime.run_inference(
            module, _runtime.TensorItems(x), batch_size=16, device=torch.device("cpu"),
            dtype=None, num_workers=0,
        )  # fmt: skip
    with torch.no_grad():
        # every row once, in order; smaller batches may round the last bit differently
        np.testing.assert_allclose(out, module.lin(x).numpy(), rtol=1e-5, atol=1e-7)


def test_out_of_memory_at_batch_one_is_raised():
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(DeviceWarning):
        _runtime.run_inference(
            _SmallMemoryDevice(limit=0), _runtime.TensorItems(torch.randn(4, 4)), batch_size=2,
            device=torch.device("cpu"), dtype=None, num_workers=0,
        )  # fmt: skip


def test_device_and_precision_resolution():
    cpu = torch.device("cpu")
    assert _runtime.resolve_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert _runtime.resolve_device("auto") == cpu
        with pytest.warns(DeviceWarning, match="CUDA is not available"):
            assert _runtime.resolve_device("cuda") == cpu
    assert _runtime.resolve_precision("auto", cpu) is None
    assert _runtime.resolve_precision("bf16", cpu) is torch.bfloat16
    assert _runtime.precision_name(torch.float16) == "fp16"
    with pytest.raises(ValueError, match="precision must be one of"):
        _runtime.resolve_precision("int8", cpu)
