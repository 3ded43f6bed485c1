"""Device, precision and batching: the one place where tensors meet hardware.

Both estimators resolve ``device``/``precision``/``num_workers`` here and run
inference through :func:`run_inference`, which streams a dataset batch by
batch into a preallocated float32 array (memory bounded by the batch size).
Every loop over a dataset (inference, skorch's training and validation, Grad-CAM)
gets its batches from :class:`BatchLoader`, one item shape at a time, collated by
:class:`Collate`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
import warnings

import numpy as np
import torch
from torch import nn

from .exceptions import DeviceError, DeviceWarning, ItemLoadError, ItemLoadWarning

_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_MAX_LISTED = 10


_VALID_DEVICES = "'auto', 'cpu', 'cuda', 'cuda:N' (N a GPU index) or 'mps'"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; an unavailable CUDA falls back with a warning.

    A string torch does not know as a device raises :class:`DeviceError` listing the
    valid ones (torch's own message is a bare ``RuntimeError``).

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("gpu")
    Traceback (most recent call last):
    ...
    sktransfer.exceptions.DeviceError: device='gpu' is not a device. Valid: 'auto', 'cpu', 'cuda', 'cuda:N' (N a GPU index) or 'mps'.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise DeviceError(
            f"device must be a str or torch.device, got {type(device).__name__}. Valid: {_VALID_DEVICES}."
        )
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"device={device!r} is not a device. Valid: {_VALID_DEVICES}.") from exc
    if dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device={device!r} is not supported. Valid: {_VALID_DEVICES}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"device={device!r} requested but CUDA is not available; using the CPU.",
            DeviceWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    if dev.type == "mps" and not (
        hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    ):
        warnings.warn(
            f"device={device!r} requested but MPS is not available; using the CPU.",
            DeviceWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    return dev


# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) at or above which bf16 matrix kernels are native.
_ONEDNN_BF16_ISAS = (
    "AVX512_CORE_BF16",
    "AVX512_CORE_FP16",
    "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512",
    "AVX10_1_512_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
    "ALL",
    "DEFAULT",
)
_CPU_FLAGS_REPORTED = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """What this CPU reports: model name, the flags that decide precision, native bf16.

    Read once per process from ``/proc/cpuinfo`` (Linux), else from torch's own CPU
    capability probes. ``native_bf16`` is True when the CPU has AVX512-BF16 or AMX-BF16
    instructions and oneDNN is not limited below them (``ONEDNN_MAX_CPU_ISA``): only then
    is bf16 autocast faster than fp32; elsewhere it is emulated and many times slower.

    Examples
    --------
    >>> info = cpu_info()
    >>> sorted(info)
    ['flags', 'model', 'native_bf16']
    >>> info["native_bf16"] == bool({"avx512_bf16", "amx_bf16"} & set(info["flags"])) or "ONEDNN_MAX_CPU_ISA" in os.environ
    True
    """
    model, flags = _read_proc_cpuinfo()
    if flags is None:  # not Linux: ask torch (private probes; failure means "no")
        flags = set()
        probes = {
            "avx2": "_is_avx2_supported",
            "avx512f": "_is_avx512_supported",
            "avx512_bf16": "_is_avx512_bf16_supported",
            "amx_tile": "_is_amx_tile_supported",
        }
        for flag, name in probes.items():
            try:
                if getattr(torch.cpu, name)():
                    flags.add(flag)
            except Exception:  # noqa: BLE001 - a capability probe must never break a fit
                pass
        if "amx_tile" in flags:
            flags.add("amx_bf16")
    native = bool({"avx512_bf16", "amx_bf16"} & flags)
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa and isa not in _ONEDNN_BF16_ISAS:
        native = False
    return {
        "model": model or platform.processor() or platform.machine() or "unknown",
        "flags": sorted(f for f in _CPU_FLAGS_REPORTED if f in flags),
        "native_bf16": native,
    }


def _read_proc_cpuinfo() -> tuple[str | None, set | None]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return None, None
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:
            flags = set(value.split())
        if model is not None and flags is not None:
            break
    return model, flags


def resolve_precision(
    precision: str, device: torch.device, *, training: bool = False
) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32).

    ``"auto"``: on CUDA, bf16 where the GPU supports it, else fp16; on the CPU, bf16
    for inference where the CPU has native bf16 (:func:`cpu_info`), fp32 elsewhere and
    for training. An explicit ``"bf16"`` on a CPU without native bf16 warns once per
    process that it is emulated and slow.

    Examples
    --------
    >>> resolve_precision("fp32", torch.device("cpu")) is None
    True
    >>> resolve_precision("auto", torch.device("cpu"), training=True) is None
    True
    >>> resolve_precision("auto", torch.device("cpu")) == (torch.bfloat16 if cpu_info()["native_bf16"] else None)
    True
    """
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and not training and cpu_info()["native_bf16"]:
            return torch.bfloat16
        return None
    if precision == "bf16":
        if device.type == "cpu" and not cpu_info()["native_bf16"]:
            _warn_once(
                "slow-bf16",
                f"precision='bf16' on a CPU without native bf16 ({cpu_info()['model']}: no "
                "AVX512-BF16 or AMX): bf16 is emulated there and many times slower than fp32. "
                "Use precision='auto' (fp32 on this CPU) unless you need bf16's numbers.",
            )
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}.")


@contextlib.contextmanager
def quiet_loading(verbose: int):
    """Silence the progress bars that Hugging Face libraries print while weights load
    (transformers' "Loading weights" bar), unless ``verbose``; restored afterwards.

    Examples
    --------
    >>> with quiet_loading(0):
    ...     pass
    """
    try:
        from huggingface_hub import utils as hub
    except ImportError:  # no Hugging Face library: nothing prints bars
        yield
        return
    if verbose or hub.are_progress_bars_disabled():
        yield
        return
    hub.disable_progress_bars()
    tf_logging = sys.modules.get("transformers.utils.logging")
    if tf_logging is not None:
        tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        tf_logging = sys.modules.get("transformers.utils.logging")  # may be imported meanwhile
        if tf_logging is not None:
            tf_logging.enable_progress_bar()  # re-enables the hub's bars too
        hub.enable_progress_bars()


_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, DeviceWarning, stacklevel=4)


PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_name(dtype: torch.dtype | None) -> str:
    """Inverse of ``PRECISION_DTYPES``: None -> "fp32", bfloat16 -> "bf16"..."""
    return {v: k for k, v in PRECISION_DTYPES.items()}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_batch_size(batch_size: int | str, device: torch.device, modality=None) -> int:
    """``"auto"``: the modality's ``auto_batch_size`` (a :class:`sktransfer._modality.Modality`;
    None for images): images 8 on the CPU, 64 on CUDA; texts 64 on the CPU, 256 on CUDA
    (short sequences; batches are length-sorted, so padding stays small).

    Images on the CPU, measured with benchmarks/extract_throughput.py (EfficientNet-Lite0
    from hymenoptera JPEGs, 2 AMD EPYC cores, images/s for batch 8 / 16 / 32): idle, fp32
    45 / 39 / 36 and bf16 101 / 99 / 78 (raw NCHW fp32 forward 36 / 26 / 21: larger batches
    fall out of cache). Only when other jobs compete for the cores does batch 32 win (median
    of 6 rounds at load average 8: fp32 3.1 / 4.3 / 4.7). Batch 8 also keeps the transient
    memory small: a fp32 transform raises the peak RSS by about 140 / 260 / 430 MiB for
    batch 8 / 16 / 32, whatever the number of images.
    """
    if batch_size != "auto":
        return int(batch_size)
    if isinstance(modality, str):
        raise TypeError(
            "resolve_batch_size takes the modality object, not its name: pass "
            "sktransfer._modality.get_modality(backbone)."
        )
    auto = _IMAGE_AUTO_BATCH_SIZE if modality is None else modality.auto_batch_size
    return int(auto["cuda" if device.type == "cuda" else "cpu"])


_IMAGE_AUTO_BATCH_SIZE = {"cpu": 8, "cuda": 64}


def resolve_num_workers(num_workers: int | str) -> int:
    """``"auto"``: no worker processes on machines with 2 cores or fewer, else up to 4.

    With 2 cores a worker decodes on the cores the forward pass already uses. Measured with
    benchmarks/extract_throughput.py (as in :func:`resolve_batch_size`, idle, images/s for
    num_workers 0 vs 1): fp32 batch 8 45 vs 32, batch 32 36 vs 26; bf16 batch 8 101 vs 47,
    batch 32 78 vs 36. Each ``transform`` call would also fork a worker.
    """
    if num_workers == "auto":
        cpus = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
        return 0 if cpus <= 2 else min(4, cpus - 1)
    return int(num_workers)


def prepare_module(
    module: nn.Module, device: torch.device, channels_last: bool = True
) -> nn.Module:
    """Move to ``device``; use channels_last memory format (faster convolutions on CPU and GPU).

    Only 4-D parameters and buffers change layout: ``Module.to(memory_format=...)``
    would also try 5-D buffers (Swin's attention masks) and fail.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> m = nn.Conv2d(3, 4, 3)
    >>> m.register_buffer("mask", torch.zeros(2, 3, 4, 5, 6))
    >>> m = prepare_module(m, torch.device("cpu"))
    >>> m.weight.is_contiguous(memory_format=torch.channels_last), m.mask.shape
    (True, torch.Size([2, 3, 4, 5, 6]))
    """
    module = module.to(device)
    if channels_last:
        module._apply(_channels_last_4d)
    return module


def _channels_last_4d(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def to_device(x, device: torch.device, channels_last: bool = True):
    """Move a batch (a tensor, or a dict of tensors for text) to ``device``."""
    if isinstance(x, dict):
        return {k: to_device(v, device, channels_last=False) for k, v in x.items()}
    x = x.to(device, non_blocking=device.type == "cuda")
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class Collate:
    """Items to one batch, for both item shapes: training pairs ``(x, y)`` give ``(x, y)``,
    inference items ``(x, index, error)`` give ``(x, index, errors)``.

    The inputs ``x`` are stacked, or, with ``batch_transform``, given to it as one list (a
    text transform tokenizes and pads a batch); targets or indices become one tensor
    (torch's ``default_collate``); errors stay a list of strings ("" for a good item).

    Examples
    --------
    >>> x, y = Collate()([(torch.zeros(2), 1), (torch.ones(2), 0)])
    >>> tuple(x.shape), y.tolist()
    ((2, 2), [1, 0])
    >>> x, index, errors = Collate()([(torch.zeros(2), 4, ""), (torch.zeros(2), 5, "bad")])
    >>> index.tolist(), errors
    ([4, 5], ['', 'bad'])
    """

    def __init__(self, batch_transform=None):
        self.batch_transform = batch_transform

    def __call__(self, batch):
        from torch.utils.data import default_collate

        xs, ys, *errors = zip(*batch)
        if self.batch_transform is None:
            x = default_collate(list(xs))
        else:
            x = self.batch_transform(list(xs))
        y = default_collate(list(ys))
        return (x, y, list(errors[0])) if errors else (x, y)

    def __setstate__(self, state):
        # text nets pickled before this class existed hold a TextCollate with `transform`
        self.batch_transform = state.get("batch_transform", state.get("transform"))


class BatchLoader(torch.utils.data.DataLoader):
    """The one iterator over a dataset: inference (:func:`inference_batches`), training
    and validation (skorch's ``iterator_train``/``iterator_valid``) and Grad-CAM.

    It is a ``DataLoader`` whose defaults come from the dataset and the device: the
    dataset's ``collate`` (else :class:`Collate`), batches from its ``batches(batch_size)``
    when it has one and the order is not shuffled (texts grouped by length; the item
    indices put rows back in place), page-locked memory for CUDA. Other keyword
    arguments go to ``DataLoader`` unchanged (an explicit ``collate_fn`` or
    ``batch_sampler`` is used as given). ``generator=None`` draws shuffling and worker
    seeds from the global torch RNG, as skorch's training expects; inference passes
    its own.

    Examples
    --------
    >>> loader = BatchLoader(TensorItems(torch.arange(10.0)[:, None]), batch_size=4)
    >>> [idx.tolist() for _, idx, _ in loader]
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """

    def __init__(
        self,
        dataset,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        *,
        device: torch.device | str | None = None,
        num_workers: int = 0,
        collate_fn=None,
        generator: torch.Generator | None = None,
        **kwargs,
    ):
        if collate_fn is None:
            collate_fn = getattr(dataset, "collate", None) or Collate()
        by_dataset = hasattr(dataset, "batches") and not shuffle and batch_size is not None
        if by_dataset and "batch_sampler" not in kwargs and "sampler" not in kwargs:
            kwargs["batch_sampler"] = dataset.batches(batch_size)
            batch_size = 1
        if "pin_memory" not in kwargs and device is not None:
            kwargs["pin_memory"] = torch.device(device).type == "cuda"
        super().__init__(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            collate_fn=collate_fn,
            generator=generator,
            **kwargs,
        )


def inference_batches(
    dataset, *, batch_size: int, device: torch.device, num_workers: int = 0
) -> BatchLoader:
    """Batches of ``dataset`` in order for a forward pass (:class:`BatchLoader`), with
    their own random generator: inference never consumes the global torch RNG that
    seeds training (the loader draws a worker seed from it otherwise)."""
    return BatchLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        device=device,
        num_workers=num_workers,
        generator=torch.Generator(),
    )


def run_inference(
    module: nn.Module,
    dataset,
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
    num_workers: int,
    on_error: str = "raise",
    verbose: int = 0,
    desc: str = "extract",
) -> np.ndarray:
    """Run ``module`` over ``dataset`` (items -> ``(x, index)``), return float32 outputs in order.

    The result has shape ``(len(dataset), *module_output_shape[1:])``.

    With ``on_error="raise"`` the first unreadable item raises
    :class:`ItemLoadError`; with ``"warn"``/``"ignore"`` its row is NaN (and a
    warning lists the failures for ``"warn"``).
    """
    dataset.errors = "return"
    loader = inference_batches(
        dataset, batch_size=batch_size, device=device, num_workers=num_workers
    )
    module.eval()
    forward = _HalvingForward(module, device)
    out: np.ndarray | None = None
    failed: list[tuple[int, str]] = []
    bar = _progress(len(dataset), verbose, desc)
    try:
        with torch.inference_mode(), autocast(device, dtype):
            for x, idx, errs in loader:
                bad = [k for k, e in enumerate(errs) if e]
                if bad and on_error == "raise":
                    k = bad[0]
                    raise ItemLoadError(
                        f"{errs[k]}.",
                        index=_original_index(dataset, int(idx[k])),
                        remedy="Pass on_error='warn' to get NaN rows for unreadable items "
                        "instead.",
                    )
                feats = forward(to_device(x, device)).float()
                feats = feats.contiguous().cpu().numpy()
                if out is None:
                    out = np.empty((len(dataset), *feats.shape[1:]), dtype=np.float32)
                rows = idx.numpy()
                out[rows] = feats
                for k in bad:
                    out[rows[k]] = np.nan
                    failed.append((int(rows[k]), errs[k]))
                bar.update(len(idx))
    finally:
        bar.close()
    if failed and on_error == "warn":
        listed = "; ".join(msg for _, msg in failed[:_MAX_LISTED])
        warnings.warn(
            f"{len(failed)} of {len(dataset)} items could not be read and are NaN rows: {listed}"
            f"{' ...' if len(failed) > _MAX_LISTED else ''}",
            ItemLoadWarning,
            stacklevel=3,
        )
    return out


class _HalvingForward:
    """Calls ``module``; on out-of-memory, halves the batch (for this and later batches),
    says so in a warning, and retries, down to one item."""

    def __init__(self, module: nn.Module, device: torch.device):
        self.module = module
        self.device = device
        self.chunk: int | None = None

    def __call__(self, x) -> torch.Tensor:
        n = _batch_len(x)
        while True:
            try:
                if self.chunk is None or n <= self.chunk:
                    return self.module(x)
                return torch.cat([self.module(part) for part in _split(x, self.chunk)])
            except torch.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                size = n if self.chunk is None else min(self.chunk, n)
                if size <= 1:
                    raise
                self.chunk = size // 2
                warnings.warn(
                    f"Out of memory on {self.device} at batch size {size}; retrying with batch "
                    f"size {self.chunk}. Pass a smaller batch_size to avoid the retry.",
                    DeviceWarning,
                    stacklevel=4,
                )


def _batch_len(x) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _split(x, size: int):
    if isinstance(x, dict):
        parts = {k: v.split(size) for k, v in x.items()}
        return [{k: parts[k][i] for k in parts} for i in range(len(next(iter(parts.values()))))]
    return x.split(size)


def _original_index(dataset, i: int) -> int:
    source = getattr(dataset, "source", None)
    return source.original_index(i) if source is not None else i


class TensorItems(torch.utils.data.Dataset):
    """Rows of a tensor as a dataset for :func:`run_inference` (e.g. cached activations)."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.errors = "return"

    def __len__(self) -> int:
        return len(self.tensor)

    def __getitem__(self, i):
        return self.tensor[i], i, ""


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, verbose: int, desc: str):
    if not verbose:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", leave=verbose > 1)
