"""Device/batching runtime: out-of-memory retry, device fallback, precision resolution."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from sktransfer import PretrainedFeatureExtractor, _runtime
from sktransfer.exceptions import DeviceError, DeviceWarning


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
    assert _runtime.resolve_precision("fp32", cpu) is None
    assert _runtime.precision_name(torch.float16) == "fp16"
    with pytest.raises(ValueError, match="precision must be one of"):
        _runtime.resolve_precision("int8", cpu)


def _cpu(native_bf16):
    return {"model": "Test CPU", "flags": ["avx2"], "native_bf16": native_bf16}


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_cpu(monkeypatch, native):
    """precision="auto" extracts in bf16 exactly where the CPU has native bf16; training
    stays fp32; an explicit "bf16" without native support warns, once per process."""
    monkeypatch.setattr(_runtime, "cpu_info", lambda: _cpu(native))
    monkeypatch.setattr(_runtime, "_WARNED", set())
    cpu = torch.device("cpu")
    assert _runtime.resolve_precision("auto", cpu) is (torch.bfloat16 if native else None)
    assert _runtime.resolve_precision("auto", cpu, training=True) is None
    ext = PretrainedFeatureExtractor(nn.Sequential(nn.Conv2d(3, 4, 3)), device="cpu").fit()
    assert ext.precision_ == ("bf16" if native else "fp32")
    if not native:
        with pytest.warns(DeviceWarning, match="emulated.*slower"):
            assert _runtime.resolve_precision("bf16", cpu) is torch.bfloat16
    with warnings.catch_warnings():  # native: no warning; emulated: only the first time
        warnings.simplefilter("error")
        assert _runtime.resolve_precision("bf16", cpu) is torch.bfloat16


def test_cpu_info_reads_the_flags_that_decide_precision(monkeypatch):
    info = _runtime.cpu_info()
    assert info["model"] and set(info["flags"]) <= set(_runtime._CPU_FLAGS_REPORTED)
    if "ONEDNN_MAX_CPU_ISA" not in os.environ:
        assert info["native_bf16"] == bool(set(info["flags"]) & {"avx512_bf16", "amx_bf16"})
    # oneDNN limited below the bf16 instructions: bf16 is no longer native
    _runtime.cpu_info.cache_clear()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    try:
        assert _runtime.cpu_info()["native_bf16"] is False
    finally:
        _runtime.cpu_info.cache_clear()


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu", ""])
def test_bad_device_strings_get_our_error(device):
    with pytest.raises(DeviceError, match="Valid: 'auto', 'cpu', 'cuda'"):
        PretrainedFeatureExtractor(device=device).fit()
