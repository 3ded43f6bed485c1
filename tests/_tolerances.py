"""Tolerances of the test suite (imported by name: ``conftest`` is ambiguous in a full run,
where tests/robustness has its own)."""

# Project convention for comparing floats (docs/reliability.md, "Comparing numbers"): the same
# fp32 computation run by other kernels (batched vs unbatched convolution, oneDNN vs reference
# kernels, another thread count or CPU) agrees to rtol=1e-4, atol=1e-4. Measured on
# EfficientNet-Lite0 features (values up to 12): batch 1/8/16, AVX-512 vs reference kernels on
# one thread differ by at most 5e-6 absolute, 1e-4 relative on values above 0.01. Tests never
# compare floats from two computations exactly, and compare to fp32 references with
# precision="fp32" pinned: precision="auto" is bf16 on CPUs with native bf16.
FP32_TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}
