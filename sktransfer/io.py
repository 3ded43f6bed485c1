"""Loading inputs: every container a user may pass becomes one indexable source.

This module is the single entry of the data path used by both estimators:
``X`` (paths, PIL images, arrays, a pandas column, a folder) becomes an
:class:`ImageSource`; an item is decoded to an RGB image; :class:`ImageTransform`
applies the backbone's preprocessing (and augmentation when training);
:class:`ImageDataset` feeds a ``DataLoader``.

Rules for numeric arrays
------------------------
* ``(n, d)``: each row is a flattened square grayscale image when ``d`` is a
  perfect square (e.g. 64 -> 8x8 digits), else a 1 x ``d`` strip.
* ``(n, H, W)``: grayscale images.
* ``(n, H, W, C)`` with ``C`` in {1, 2, 3, 4}: channels last; otherwise
  ``(n, C, H, W)`` with ``C`` in {1, 2, 3, 4}: channels first.
* Values: ``uint8`` is divided by 255, ``uint16`` by 65535, ``bool`` maps to
  {0, 1}; other dtypes are used as they are when they lie in [0, 1], else each
  image is min-max scaled to [0, 1] on its own (so ``load_digits`` values
  0..16 work). NaN or infinite values are an error naming the row.
* 1 channel is repeated to 3; 2 (gray + alpha) and 4 (RGBA) channels are
  composited over a white background.

Rules for image files and PIL images
------------------------------------
EXIF orientation is applied; palette, 1-bit, CMYK and other modes are converted
to RGB; transparency (RGBA, LA, P with transparency) is composited over white;
16- and 32-bit grayscale (``I;16``, ``I``, ``F``: medical and scientific
images) is min-max scaled per image; animated GIFs and multi-page TIFFs use
their first frame. Images above Pillow's decompression-bomb limit are refused.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from ._containers import LazyItems, from_data_library
from ._runtime import Collate
from .exceptions import InputError, ItemLoadError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "as_image_source",
    "open_image",
    "to_rgb",
    "ImageTransform",
    "ImageDataset",
]

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
)  # fmt: skip
_MAX_LISTED = 5

# A truncated JPEG must be an error, not a silently grey-filled image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# --------------------------------------------------------------------------- decoding


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB following the module's documented rules.

    Examples
    --------
    >>> from PIL import Image
    >>> to_rgb(Image.new("RGBA", (2, 2), (255, 0, 0, 0))).getpixel((0, 0))
    (255, 255, 255)
    >>> to_rgb(Image.new("I;16", (2, 1), 4000)).mode
    'RGB'
    """
    img = ImageOps.exif_transpose(img) if hasattr(img, "getexif") and img.getexif() else img
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(_minmax_uint8(arr)).convert("RGB")
    return img.convert("RGB")


def _minmax_uint8(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def open_image(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Open an image file as RGB; JPEGs are decoded at reduced size when that is enough.

    ``draft_size`` is the smallest side the caller will resize to: JPEG DCT
    scaling then decodes at 1/2, 1/4 or 1/8 of the size when the result stays
    at least that large, which is several times cheaper than a full decode.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> Image.new("LA", (4, 3)).save(os.path.join(folder, "gray_alpha.png"))
    >>> img = open_image(os.path.join(folder, "gray_alpha.png"))
    >>> img.mode, img.size, img.getpixel((0, 0))  # transparent: composited over white
    ('RGB', (4, 3), (255, 255, 255))
    >>> Image.new("RGB", (400, 300)).save(os.path.join(folder, "photo.jpg"))
    >>> open_image(os.path.join(folder, "photo.jpg"), draft_size=100).size  # decoded at 1/2
    (200, 150)
    """
    with Image.open(path) as img:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        return to_rgb(img)


# --------------------------------------------------------------------------- sources


def _describe_value(v: Any) -> str:
    if isinstance(v, (str, os.PathLike)):
        return repr(os.fspath(v))
    if isinstance(v, Image.Image):
        return f"PIL image {v.mode} {v.size[0]}x{v.size[1]}"
    if isinstance(v, np.ndarray):
        return f"array of shape {v.shape} and dtype {v.dtype}"
    return type(v).__name__


@dataclass
class ImageSource:
    """An indexable view over the images in ``X``; items are decoded lazily.

    Attributes
    ----------
    kind : {"paths", "pil", "arrays", "array"}
        ``array``: one numeric array holding all images (``images`` has the
        layout ``(n, H, W, C)``); the others: a sequence of items.
    items : sequence
        Paths, PIL images or per-item arrays (for ``kind != "array"``).
    images : ndarray or None
        For ``kind == "array"``.

    Examples
    --------
    Usually made by :func:`as_image_source`:

    >>> import numpy as np
    >>> src = ImageSource("array", images=np.zeros((3, 8, 8, 1), dtype=np.uint8))
    >>> len(src), src.load(0).mode, src.load(0).size  # 8-bit grayscale: an RGB image
    (3, 'RGB', (8, 8))
    >>> tuple(ImageSource("array", images=np.full((3, 8, 8, 1), 0.5)).load(0).shape)  # not 8-bit
    (3, 8, 8)
    >>> part = src.subset([2, 0])
    >>> len(part), part.original_index(0), part.describe(0)
    (2, 2, 'row 2')
    >>> ImageSource("paths", items=["a.jpg", "b.png"]).file_paths()
    ['a.jpg', 'b.png']
    """

    kind: str
    items: Sequence | None = None
    images: np.ndarray | None = None
    origin: np.ndarray | None = None  # positions in the user's X, for a subset

    def original_index(self, i: int) -> int:
        return int(self.origin[i]) if self.origin is not None else int(i)

    def __len__(self) -> int:
        return len(self.images) if self.kind == "array" else len(self.items)

    def describe(self, i: int) -> str:
        if self.kind == "paths":
            return repr(os.fspath(self.items[i]))
        if self.kind == "array":
            return f"row {self.original_index(i)}"
        return _describe_value(self.items[i])

    def load(self, i: int, draft_size: int | None = None) -> Image.Image | torch.Tensor:
        """Item ``i`` as an RGB PIL image (8-bit data: files, PIL images, uint8 arrays) or a
        float tensor (3, H, W) in [0, 1] (other arrays, which 8 bits would round)."""
        if self.kind == "paths":
            return open_image(self.items[i], draft_size)
        if self.kind == "pil":
            return to_rgb(self.items[i])
        arr = self.images[i] if self.kind == "array" else _item_array_hwc(self.items[i], i)
        if arr.dtype == np.uint8:
            return _uint8_to_image(arr)
        eight_bit = _as_8bit(arr)
        if eight_bit is not None:  # e.g. uint8 pixels / 255: the very same image
            return _uint8_to_image(eight_bit)
        return _array_to_tensor(arr, i)

    def file_paths(self) -> list[str] | None:
        return [os.fspath(p) for p in self.items] if self.kind == "paths" else None

    def subset(self, indices) -> ImageSource:
        """The items at ``indices``, in that order (array data is not copied beyond them)."""
        indices = np.asarray(indices, dtype=np.int64)
        origin = self.origin[indices] if self.origin is not None else indices
        if self.kind == "array":
            return ImageSource("array", images=self.images[indices], origin=origin)
        if isinstance(self.items, LazyItems):
            return ImageSource(self.kind, items=self.items.take(indices), origin=origin)
        return ImageSource(self.kind, items=[self.items[i] for i in indices], origin=origin)

    def fingerprint(self, i: int) -> bytes:
        """Bytes that identify item ``i``'s content (a file's bytes, an image's pixels).

        Used for cache keys: a changed file gives a new key, never a stale hit.
        """
        h = hashlib.blake2b(digest_size=20)
        if self.kind == "paths":
            with open(self.items[i], "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        elif self.kind == "pil":
            img = self.items[i]
            h.update(f"{img.mode}{img.size}".encode())
            h.update(img.tobytes())
        else:
            a = np.ascontiguousarray(self.images[i] if self.kind == "array" else np.asarray(self.items[i]))
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        return h.digest()


def _item_array_hwc(a: np.ndarray, i: int) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        return a[:, :, None]
    if a.ndim == 3:
        if a.shape[-1] in (1, 2, 3, 4):
            return a
        if a.shape[0] in (1, 2, 3, 4):
            return np.moveaxis(a, 0, -1)
    raise ItemLoadError(
        f"Item {i}: got an array of shape {a.shape}; expected (H, W), (H, W, C) or (C, H, W) "
        "with C in 1..4.",
        index=i,
    )


_MODES_BY_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _uint8_to_image(a: np.ndarray) -> Image.Image:
    """(H, W, C) uint8 array -> RGB PIL image, converted exactly as a PIL image of the same
    pixels would be (so an array and the image it came from give the same features)."""
    c = a.shape[-1]
    a = np.ascontiguousarray(a[..., 0] if c == 1 else a)
    return to_rgb(Image.fromarray(a, _MODES_BY_CHANNELS[c]))


def _as_8bit(a: np.ndarray) -> np.ndarray | None:
    """``a`` as uint8 when it holds 8-bit pixels exactly (floats in [0, 1] that are
    multiples of 1/255, as ``uint8 / 255`` gives), else None."""
    if not np.issubdtype(a.dtype, np.floating) or a.size == 0:
        return None
    lo, hi = float(a.min()), float(a.max())
    if not (0.0 <= lo and hi <= 1.0):
        return None
    scaled = a.astype(np.float64) * 255.0
    q = np.rint(scaled)
    if np.abs(scaled - q).max() > 1e-3:
        return None
    return q.astype(np.uint8)


def _array_to_tensor(a: np.ndarray, i: int) -> torch.Tensor:
    """(H, W, C) array that is not 8-bit (uint8 goes through :func:`_uint8_to_image`)
    -> float tensor (3, H, W) in [0, 1]."""
    if a.dtype == np.uint16:
        x = a.astype(np.float32) / 65535.0
    elif a.dtype == np.bool_:
        x = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.number):
        x = a.astype(np.float32)
        if not np.isfinite(x).all():
            raise ItemLoadError(f"Item {i} contains NaN or infinite values.", index=i)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    else:
        raise ItemLoadError(f"Item {i}: array dtype {a.dtype} is not numeric.", index=i)
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
    c = t.shape[0]
    if c in (2, 4):  # composite over white using the alpha channel
        alpha = t[-1:]
        t = t[:-1] * alpha + (1.0 - alpha)
        c -= 1
    if c == 1:
        t = t.expand(3, -1, -1)
    return t


def _numeric_images(X: np.ndarray) -> np.ndarray:
    """Numeric array -> (n, H, W, C) view following the module rules."""
    if X.ndim == 2:
        n, d = X.shape
        side = math.isqrt(d)
        if side * side == d:
            return X.reshape(n, side, side, 1)
        return X.reshape(n, 1, d, 1)
    if X.ndim == 3:
        return X[..., None]
    if X.ndim == 4:
        if X.shape[-1] in (1, 2, 3, 4):
            return X
        if X.shape[1] in (1, 2, 3, 4):
            return np.moveaxis(X, 1, -1)
        raise InputError(
            f"Got a 4-D array of shape {X.shape}: expected (n, H, W, C) or (n, C, H, W) with "
            "C (channels) in 1..4."
        )
    raise InputError(
        f"Got a {X.ndim}-D numeric array of shape {X.shape}: expected (n, d) flattened images, "
        "(n, H, W), (n, H, W, C) or (n, C, H, W)."
        + (" Reshape your data with X.reshape(1, -1) if it is one flattened image." if X.ndim == 1 else "")
    )


def _check_finite_rows(X: np.ndarray) -> None:
    if np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.complexfloating):
        bad = ~np.isfinite(X.reshape(len(X), -1)).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise InputError(
                f"Input contains NaN or infinity in {len(rows)} row(s), first: "
                f"{rows[:_MAX_LISTED].tolist()}. Impute or drop them first."
            )


def as_image_source(X: Any, *, check_files: bool = True) -> ImageSource:
    """Turn any supported ``X`` into an :class:`ImageSource`, validating it cheaply.

    Parameters
    ----------
    X : sequence of paths, PIL images or arrays; numeric array; pandas Series
        or one-column DataFrame; or a folder path (all images below it, sorted).
    check_files : bool, default=True
        Check up front that every path exists, so a missing file is reported
        before any computation starts.

    Raises
    ------
    InputError
        Empty input, unsupported container or item type, wrong array rank,
        NaN, or missing files (all of them are listed, up to five).

    Examples
    --------
    >>> import numpy as np
    >>> src = as_image_source(np.full((5, 8, 8), 0.5, dtype=np.float32))
    >>> src.kind, len(src), tuple(src.load(0).shape)
    ('array', 5, (3, 8, 8))
    """
    if isinstance(X, (str, os.PathLike)):
        if os.path.isdir(X):
            return as_image_source(list_image_folder(X)[0], check_files=False)
        raise InputError(
            f"X is a single path {os.fspath(X)!r}. Pass a list of image paths ([path] for one "
            "image) or a folder."
        )
    X = _unwrap_container(X)
    if isinstance(X, LazyItems):  # decoded on access: not opened here
        if not len(X):
            raise InputError("X is empty (0 items); expected at least one image.")
        return ImageSource(X.kind, items=X)
    if isinstance(X, np.ndarray) and X.dtype.kind not in "OUS":
        if X.size == 0 or len(X) == 0:
            raise InputError(f"X is empty (shape {X.shape}); expected at least one image.")
        if not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
            raise InputError(f"Numeric image arrays must have a numeric dtype, got {X.dtype}.")
        images = _numeric_images(X)
        _check_finite_rows(images)
        return ImageSource("array", images=images)
    items = list(X.ravel()) if isinstance(X, np.ndarray) else list(X)
    if not items:
        raise InputError("X is empty (0 items); expected at least one image.")
    kinds = {_item_kind(v, i) for i, v in enumerate(items)}
    if len(kinds) > 1:
        raise InputError(f"X mixes item types {sorted(kinds)}; use one type for all items.")
    kind = kinds.pop()
    if kind == "number":
        return as_image_source(np.asarray(items), check_files=check_files)
    if kind == "paths" and check_files:
        missing = [i for i, p in enumerate(items) if not os.path.isfile(p)]
        if missing:
            listed = ", ".join(f"{i}: {os.fspath(items[i])!r}" for i in missing[:_MAX_LISTED])
            raise ItemLoadError(
                f"{len(missing)} of {len(items)} image files not found ({listed}"
                f"{' ...' if len(missing) > _MAX_LISTED else ''}).",
                index=missing[0],
                item=os.fspath(items[missing[0]]),
                remedy="Fix the paths, or pass on_error='warn' to get NaN rows for unreadable "
                "items.",
            )
    if kind == "arrays":
        for i, a in enumerate(items):
            a = np.asarray(a)
            if a.dtype.kind not in "biuf" or a.size == 0:
                raise ItemLoadError(
                    f"Item {i}: {_describe_value(a)} is not a non-empty numeric image.", index=i
                )
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise ItemLoadError(f"Item {i} contains NaN or infinite values.", index=i)
    return ImageSource(kind, items=items)


def _unwrap_container(X: Any) -> Any:
    """pandas / polars / Arrow / datasets / torch / array-likes -> ndarray, list or
    :class:`~sktransfer._containers.LazyItems`; one-column frames -> their column."""
    converted = from_data_library(X)
    if converted is not None:
        return converted
    if hasattr(X, "iloc") and hasattr(X, "columns"):  # DataFrame
        if all(getattr(dt, "kind", "O") in "biuf" for dt in X.dtypes):
            return X.to_numpy()
        if X.shape[1] != 1:
            raise InputError(
                f"Got a DataFrame with {X.shape[1]} columns {list(X.columns)[:10]}; expected one "
                "column of images (e.g. paths). Select it, or use a ColumnTransformer."
            )
        X = X.iloc[:, 0]
    if hasattr(X, "iloc"):  # Series
        return X.to_numpy() if X.dtype.kind in "biufc" else list(X)
    if isinstance(X, torch.Tensor):
        return X.detach().cpu().numpy()
    if isinstance(X, np.ndarray):
        if X.dtype.kind in "OUS" and X.ndim == 2 and X.shape[1] == 1:
            return X[:, 0]
        if X.dtype.kind == "c":
            raise InputError("Complex data not supported; expected real-valued images.")
        return X
    if isinstance(X, (list, tuple)):
        return X
    if hasattr(X, "__array__"):
        return np.asarray(X)
    if hasattr(X, "__len__") and hasattr(X, "__getitem__"):
        return list(X)
    raise InputError(
        f"Unsupported input type {type(X).__name__}: expected a list of paths, PIL images or "
        "arrays, a numeric array, a pandas Series or one-column DataFrame, or a folder path."
    )


def _item_kind(v: Any, i: int) -> str:
    if isinstance(v, (str, os.PathLike)):
        return "paths"
    if isinstance(v, Image.Image):
        return "pil"
    if isinstance(v, np.ndarray) and v.ndim >= 1 or isinstance(v, torch.Tensor):
        return "arrays"
    # before the numbers: a NaN among paths is a missing value (pandas), not a number
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        raise InputError(f"Item {i} is missing (None/NaN); expected an image or a path.")
    if isinstance(v, (int, float, np.number, list, tuple)) and not isinstance(v, bool):
        return "number"
    raise InputError(
        f"Item {i} is a {type(v).__name__}; expected a path (str or Path), a PIL image or a "
        "numpy array."
    )


# --------------------------------------------------------------------------- transforms


class ImageTransform:
    """The backbone's preprocessing, optionally preceded by augmentation.

    Resize the shorter side to ``resize_size``, center-crop ``input_size``,
    scale to [0, 1], normalize. With ``augment`` the resize + crop is replaced
    by the augmentation (presets crop at random, see :mod:`sktransfer.augment`),
    then a resize to ``input_size`` if the augmentation did not already give it.

    Every container is resized by the same implementation, :func:`resample`
    (Pillow's filters), so a path, the PIL image, its uint8 array and its float
    array (``uint8 / 255``) give the same features.

    Parameters
    ----------
    data_config : DataConfig
    augment : callable or None
        A torchvision transform applied to the RGB image (PIL or tensor)
        before normalization; see :mod:`sktransfer.augment`.

    Examples
    --------
    >>> from sktransfer.backbones import DataConfig
    >>> from PIL import Image
    >>> import numpy as np
    >>> t = ImageTransform(DataConfig(input_size=32, resize_size=40))
    >>> tuple(t(Image.new("RGB", (80, 60))).shape)
    (3, 32, 32)
    >>> pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    >>> as_8bit = t(Image.fromarray(pixels))
    >>> as_float = t(torch.from_numpy(pixels / 255.0).permute(2, 0, 1))  # resampled in float
    >>> float((as_8bit - as_float).abs().mean()) < 0.01  # the same image, up to 8-bit rounding
    True
    """

    def __init__(self, data_config, augment=None):
        self.data_config = data_config
        self.augment = augment

    def __call__(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        cfg = self.data_config
        size = (cfg.input_size, cfg.input_size)
        if self.augment is not None:
            img = self.augment(img)
            if image_size(img) != size:
                img = resample(img, size, cfg.interpolation)
        elif cfg.resize_size is None:
            img = resample(img, size, cfg.interpolation)
        elif cfg.resize_size >= cfg.input_size:
            img = _resize_center_crop(img, cfg.resize_size, cfg.input_size, cfg.interpolation)
        else:  # the crop is larger than the resized image: torchvision pads the borders
            from torchvision.transforms.v2 import functional as F

            img = resample(img, _shorter_side_to(image_size(img), cfg.resize_size), cfg.interpolation)
            img = F.center_crop(img, [cfg.input_size, cfg.input_size])
        if isinstance(img, Image.Image):  # 8-bit data
            t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
            t = t.float().div_(255.0)
        else:
            t = img.to(torch.float32).clamp(0.0, 1.0) if img.dtype.is_floating_point else img.float() / 255.0
        if cfg.in_chans == 1 and t.shape[0] == 3:
            t = (t * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        mean = torch.tensor(cfg.mean[: t.shape[0]]).view(-1, 1, 1)
        std = torch.tensor(cfg.std[: t.shape[0]]).view(-1, 1, 1)
        return t.sub_(mean).div_(std)

    def draft_size(self) -> int | None:
        """Smallest side a JPEG may be decoded at (DCT scaling) without changing the features.

        ``_DRAFT_MARGIN`` times the resize target: the later antialiased resize then
        averages away the difference between a reduced and a full decode.
        """
        cfg = self.data_config
        if self.augment is not None:
            return None
        return _DRAFT_MARGIN * (cfg.resize_size or cfg.input_size)

    def __repr__(self) -> str:
        return f"ImageTransform({self.data_config!r}, augment={self.augment!r})"


# JPEG draft decoding (1/2, 1/4, 1/8 scale) is kept only where the decoded image is still at
# least this many times the resize target. Measured on the 12 photos of ../shared/data with a
# short side >= 512 px, EfficientNet-Lite0 features, draft vs full decode: a margin of 1 gave
# cosine down to 0.980, 2 down to 0.9994, 3 down to 0.9997, 4 (kept) 1.0.
_DRAFT_MARGIN = 4

_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def image_size(img: Image.Image | torch.Tensor) -> tuple[int, int]:
    """``(width, height)`` of a PIL image or a (C, H, W) tensor."""
    if isinstance(img, Image.Image):
        return img.size
    return int(img.shape[-1]), int(img.shape[-2])


def resample(
    img: Image.Image | torch.Tensor, size: tuple[int, int], interpolation: str, box=None
) -> Image.Image | torch.Tensor:
    """Resize ``img`` (or the region ``box`` of it) to ``size`` = (width, height).

    The one resize of the data path: Pillow's filters for every container. 8-bit images
    (files, PIL images, uint8 arrays, float arrays holding 8-bit values) are resampled
    as RGB images; other data (16-bit, min-max scaled or fractional floats) channel by
    channel as 32-bit float images (Pillow mode ``"F"``), so it is not rounded to 8 bits.
    Returns a PIL image for a PIL image, else a float tensor (C, H, W) in [0, 1]
    (bicubic overshoot clipped, as an 8-bit resize would).

    Examples
    --------
    >>> import torch
    >>> resample(torch.ones(3, 10, 20), (8, 4), "bicubic").shape
    torch.Size([3, 4, 8])
    >>> resample(torch.full((3, 10, 20), 255, dtype=torch.uint8), (8, 4), "bicubic").getpixel((0, 0))
    (255, 255, 255)
    >>> from PIL import Image
    >>> resample(Image.new("RGB", (20, 10)), (8, 4), "bilinear", box=(0, 0, 10, 5)).size
    (8, 4)
    """
    filt = _PIL_RESAMPLE[interpolation]
    if isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and img.shape[0] == 3:
        img = Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).cpu().numpy()), "RGB")
    if isinstance(img, Image.Image):
        return img.resize(size, filt, box=box)
    scale = 1.0 if img.dtype.is_floating_point else 1.0 / 255.0  # other integer tensors
    arrays = img.detach().to("cpu", torch.float32).numpy()
    planes = [Image.fromarray(np.ascontiguousarray(a), mode="F") for a in arrays]
    out = np.stack([np.asarray(p.resize(size, filt, box=box)) for p in planes])
    return torch.from_numpy(out).mul_(scale).clamp_(0.0, 1.0)


def _shorter_side_to(size: tuple[int, int], side: int) -> tuple[int, int]:
    """Output (width, height) of torchvision's ``resize(img, [side])``: shorter side to ``side``."""
    w, h = size
    if w <= h:
        return side, int(side * h / w)
    return int(side * w / h), side


def _resize_center_crop(img, resize_size: int, crop: int, interpolation: str):
    """Resize the shorter side to ``resize_size`` then center-crop ``crop``, in one resample.

    Same geometry as torchvision's ``resize`` + ``center_crop`` (output sizes
    and crop offsets rounded alike), but only the kept crop is resampled from
    the source box, which is about twice as fast; pixels differ by less than
    0.01/255 on average (measured on hymenoptera).
    """
    w, h = image_size(img)
    new_w, new_h = _shorter_side_to((w, h), resize_size)
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    sx, sy = w / new_w, h / new_h
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    return resample(img, (crop, crop), interpolation, box=box)


class ImageDataset(torch.utils.data.Dataset):
    """A map-style dataset over an :class:`ImageSource`.

    ``dataset[i]`` is ``(x, y)``: the transformed image and its target (the
    item index when ``targets`` is None). With ``errors="return"``, an item
    that fails to load gives a zero image and its index is recorded by the
    collate step instead of raising, so one bad file does not stop a run.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer.backbones import DataConfig
    >>> transform = ImageTransform(DataConfig(input_size=16, resize_size=None))
    >>> ds = ImageDataset(as_image_source(np.zeros((4, 8, 8))), transform, targets=[1, 0, 1, 0])
    >>> x, y = ds[2]
    >>> len(ds), tuple(x.shape), y
    (4, (3, 16, 16), 1)

    With ``errors="return"`` an unreadable item gives a zero image and the error:

    >>> bad = ImageDataset(ImageSource("paths", items=["no-such-file.png"]), transform,
    ...                    errors="return")
    >>> x, y, error = bad[0]
    >>> float(x.abs().sum()), y
    (0.0, 0)
    >>> print(error)  # doctest: +ELLIPSIS
    Could not read item 0 ('no-such-file.png'): FileNotFoundError: ...
    """

    def __init__(self, source: ImageSource, transform: ImageTransform, targets=None, errors="raise"):
        self.source = source
        self.transform = transform
        self.targets = targets
        self.errors = errors

    def __len__(self) -> int:
        return len(self.source)

    def load(self, i: int) -> torch.Tensor:
        try:
            return self.transform(self.source.load(i, self.transform.draft_size()))
        except ItemLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoding can fail in many library-specific ways
            raise ItemLoadError(
                f"Could not read item {self.source.original_index(i)} ({self.source.describe(i)}): "
                f"{type(exc).__name__}: {exc}",
                index=self.source.original_index(i),
                item=self.source.describe(i),
            ) from exc

    def __getitem__(self, i: int):
        i = int(i)
        target = i if self.targets is None else self.targets[i]
        if self.errors == "raise":
            return self.load(i), target
        try:
            return self.load(i), target, ""
        except ItemLoadError as exc:
            cfg = self.transform.data_config
            blank = torch.zeros(cfg.in_chans, cfg.input_size, cfg.input_size)
            return blank, target, str(exc)


def item_paths(X) -> list[str] | None:
    """The file paths behind ``X`` when it is made of paths (used for cache keys)."""
    return as_image_source(X, check_files=False).file_paths()


def is_image_path(p: str | Path) -> bool:
    return str(p).lower().endswith(IMAGE_EXTENSIONS)


def list_image_folder(root: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """The image files under ``root/<class>/`` in sorted order, their class indices and the
    sorted class names (a folder of images without sub-folders: one class, no names);
    :func:`sktransfer.datasets.load_image_folder` wraps this in a Bunch.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "cat"))
    >>> Image.new("RGB", (4, 4)).save(os.path.join(root, "cat", "a.png"))
    >>> paths, targets, classes = list_image_folder(root)
    >>> [os.path.basename(p) for p in paths], targets, classes
    (['a.png'], [0], ['cat'])
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"Image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    paths: list[str] = []
    targets: list[int] = []
    if classes:
        for label, cls in enumerate(classes):
            for dirpath, dirnames, filenames in os.walk(root / cls):
                dirnames.sort()
                for f in sorted(filenames):
                    if is_image_path(f):
                        paths.append(os.path.join(dirpath, f))
                        targets.append(label)
    else:
        paths = [str(p) for p in sorted(root.iterdir()) if p.is_file() and is_image_path(p)]
        targets = [0] * len(paths)
    if not paths:
        raise InputError(
            f"No image files found under {root}; expected root/<class>/<image> with extensions "
            "such as .jpg or .png."
        )
    return paths, targets, classes


# --------------------------------------------------------------------------- text


@dataclass
class TextSource:
    """The texts in ``X``, validated; the text counterpart of :class:`ImageSource`."""

    texts: list[str]
    origin: np.ndarray | None = None
    kind: str = "text"

    def __len__(self) -> int:
        return len(self.texts)

    def original_index(self, i: int) -> int:
        return int(self.origin[i]) if self.origin is not None else int(i)

    def describe(self, i: int) -> str:
        t = self.texts[i]
        return f"text {self.original_index(i)} {t[:40]!r}{'...' if len(t) > 40 else ''}"

    def load(self, i: int, draft_size=None) -> str:
        return self.texts[i]

    def subset(self, indices) -> TextSource:
        indices = np.asarray(indices, dtype=np.int64)
        origin = self.origin[indices] if self.origin is not None else indices
        return TextSource([self.texts[i] for i in indices], origin=origin)

    def fingerprint(self, i: int) -> bytes:
        return hashlib.blake2b(self.texts[i].encode("utf-8"), digest_size=20).digest()

    def file_paths(self):
        return None


def as_text_source(X: Any) -> TextSource:
    """Validate a column of texts: a list, array, pandas Series or one-column DataFrame of str.

    Empty strings are allowed (they encode as the special tokens only). ``None``,
    NaN and non-string items are an error naming the row, never a silent shape change.

    Examples
    --------
    >>> len(as_text_source(["good", "bad", ""]))
    3
    """
    if isinstance(X, (str, os.PathLike)):
        raise InputError("X is a single string; pass a list (or column) of texts, e.g. [text].")
    X = _unwrap_container(X)
    if isinstance(X, LazyItems):
        raise InputError(
            "X is a column of images, but the backbone is a text model. Use an image backbone "
            "such as 'efficientnet_lite0' for images."
        )
    items = list(X.ravel()) if isinstance(X, np.ndarray) else list(X)
    if not items:
        raise InputError("X is empty (0 texts); expected at least one text.")
    for i, v in enumerate(items):
        if isinstance(v, str):
            continue
        if isinstance(v, np.str_):
            items[i] = str(v)
            continue
        if _is_missing_text(v):
            raise InputError(
                f"Text {i} is missing (None/NaN). Fill missing texts first, e.g. "
                "X.fillna('') for a pandas column."
            )
        if isinstance(v, (Image.Image, np.ndarray, torch.Tensor)):
            raise InputError(
                f"Item {i} is an image ({_describe_value(v)}), but the backbone is a text model. "
                "Use an image backbone such as 'efficientnet_lite0' for images."
            )
        raise InputError(f"Text {i} is a {type(v).__name__}, not a str; convert the column to str.")
    return TextSource([str(t) for t in items])


def _is_missing_text(v: Any) -> bool:
    """None, a float NaN (Python or NumPy) or pandas' NA/NaT: what ``isna`` calls missing."""
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return True
    return type(v).__name__ in ("NAType", "NaTType")  # pandas.NA / pandas.NaT, without pandas


class TextDataset(torch.utils.data.Dataset):
    """Texts for a DataLoader: items are raw strings, :meth:`collate` tokenizes a batch with
    dynamic padding, and :meth:`batches` groups texts of similar length (order is restored
    by the caller through the item indices)."""

    def __init__(self, source: TextSource, transform, targets=None, errors="raise"):
        self.source = source
        self.transform = transform
        self.targets = targets
        self.errors = errors

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        i = int(i)
        target = i if self.targets is None else self.targets[i]
        if self.errors == "raise":
            return self.source.texts[i], target
        return self.source.texts[i], target, ""

    @property
    def collate(self) -> Collate:
        """Tokenizes a batch of texts (with dynamic padding), for either item shape."""
        return Collate(self.transform)

    def batches(self, batch_size: int, window: int = 50) -> list[list[int]]:
        """Index batches sorted by length within windows of ``window`` batches (less padding)."""
        lengths = np.fromiter((len(t) for t in self.source.texts), dtype=np.int64, count=len(self))
        out: list[list[int]] = []
        span = batch_size * window
        for start in range(0, len(self), span):
            block = np.arange(start, min(start + span, len(self)))
            block = block[np.argsort(lengths[block], kind="stable")]
            out += [block[k : k + batch_size].tolist() for k in range(0, len(block), batch_size)]
        return out


def make_dataset(source, transform, targets=None):
    """The dataset over ``source`` (an image or a text source), with ``transform`` applied.

    The modality of a backbone (:mod:`sktransfer._modality`) builds sources and
    transforms; this only pairs a source with its dataset type."""
    if isinstance(source, TextSource):
        return TextDataset(source, transform, targets)
    return ImageDataset(source, transform, targets)
