"""sktransfer.io: every input container, the value rules, image modes and input errors."""

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from sktransfer.exceptions import InputError, ItemLoadError, ItemLoadWarning
from sktransfer.io import as_image_source, open_image, to_rgb


def pixels(X, i=0) -> np.ndarray:
    """Item ``i`` of ``X`` as loaded by sktransfer: float (H, W, 3) in [0, 1]."""
    item = as_image_source(X).load(i)
    if isinstance(item, Image.Image):
        assert item.mode == "RGB"
        return np.asarray(item, dtype=np.float64) / 255.0
    assert isinstance(item, torch.Tensor) and item.shape[0] == 3
    return item.permute(1, 2, 0).double().numpy()


@pytest.fixture(scope="module")
def folder_features(fitted_extractor, image_paths):
    """Features of the generated folder's images given as a list of str paths."""
    return fitted_extractor.transform(image_paths)


# --------------------------------------------------------------------------- containers


@pytest.mark.parametrize(
    "container",
    [
        "list_str",
        "list_path",
        "tuple",
        "object_array",
        "object_column",
        "series",
        "dataframe",
        "pil",
        "folder",
    ],
)
def test_containers_give_the_same_features(
    container, fitted_extractor, image_paths, image_folder, folder_features
):
    X = {
        "list_str": lambda: list(image_paths),
        "list_path": lambda: [Path(p) for p in image_paths],
        "tuple": lambda: tuple(image_paths),
        "object_array": lambda: np.array(image_paths, dtype=object),
        "object_column": lambda: np.array(image_paths, dtype=object)[:, None],
        "series": lambda: pd.Series(image_paths, name="path"),
        "dataframe": lambda: pd.DataFrame({"path": image_paths}),
        "pil": lambda: [Image.open(p) for p in image_paths],
        "folder": lambda: str(image_folder),
    }[container]()
    with warnings.catch_warnings():
        # the fixture was fitted without X, so a DataFrame's column name is new to it
        warnings.filterwarnings("ignore", "X has feature names", UserWarning)
        F = fitted_extractor.transform(X)
    assert F.dtype == np.float32 and F.shape == (len(image_paths), 1280)
    np.testing.assert_allclose(F, folder_features, rtol=1e-4, atol=1e-4)


def test_folder_as_path_object(image_folder, image_paths):
    src = as_image_source(image_folder)
    assert src.kind == "paths" and src.file_paths() == image_paths


def test_paths_load_as_rgb(image_paths):
    src = as_image_source(image_paths)
    assert src.kind == "paths" and len(src) == len(image_paths)
    img = src.load(0)
    assert img.mode == "RGB" and img.size == Image.open(image_paths[0]).size


def test_numpy_layouts_agree():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(3, 6, 5), dtype=np.uint8)
    for X in (gray, gray[..., None], gray[:, None]):  # (N,H,W), (N,H,W,1), (N,1,H,W)
        got = pixels(X, 1)
        assert got.shape == (6, 5, 3)
        np.testing.assert_allclose(got, np.repeat(gray[1, :, :, None], 3, -1) / 255.0, atol=1e-6)
    rgb = rng.integers(0, 256, size=(3, 6, 5, 3), dtype=np.uint8)
    channels_first = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(pixels(rgb, 2), rgb[2] / 255.0, atol=1e-6)
    np.testing.assert_allclose(pixels(channels_first, 2), rgb[2] / 255.0, atol=1e-6)
    np.testing.assert_allclose(
        pixels(channels_first.astype(np.float32) / 255, 2), rgb[2] / 255.0, atol=1e-6
    )
    assert as_image_source(rgb).kind == "array" and len(as_image_source(rgb)) == 3


def test_flattened_rows():
    digits = load_digits()
    X = digits.data[:5]  # (5, 64) -> 8x8 images
    assert pixels(X, 3).shape == (8, 8, 3)
    np.testing.assert_allclose(pixels(X, 3), pixels(digits.images[:5], 3))
    # a non-square row length is a 1 x d strip
    assert pixels(np.arange(10.0).reshape(2, 5), 1).shape == (1, 5, 3)


def test_torch_tensor_input():
    t = torch.rand(2, 3, 7, 9)
    np.testing.assert_allclose(pixels(t, 1), t[1].permute(1, 2, 0).numpy(), atol=1e-6)


def test_list_of_arrays_of_different_sizes(fitted_extractor):
    rng = np.random.default_rng(1)
    items = [
        rng.integers(0, 256, (20, 30), dtype=np.uint8),  # (H, W)
        rng.integers(0, 256, (40, 25, 3), dtype=np.uint8),  # (H, W, C)
        rng.random((3, 16, 50)).astype(np.float32),  # (C, H, W) float
        rng.integers(0, 256, (12, 12, 4), dtype=np.uint8),  # RGBA
    ]
    src = as_image_source(items)
    assert src.kind == "arrays"
    assert [pixels(items, i).shape for i in range(4)] == [
        (20, 30, 3),
        (40, 25, 3),
        (16, 50, 3),
        (12, 12, 3),
    ]
    F = fitted_extractor.transform(items)
    assert F.shape == (4, 1280) and np.isfinite(F).all()
    # each row is the item's own features, whatever else is in the batch
    np.testing.assert_allclose(
        F[1], fitted_extractor.transform(items[1:2])[0], rtol=1e-5, atol=1e-6
    )


# --------------------------------------------------------------------------- value rules


def test_uint_and_bool_scaling():
    np.testing.assert_allclose(pixels(np.full((1, 2, 2), 255, np.uint8)), 1.0)
    np.testing.assert_allclose(pixels(np.full((1, 2, 2), 51, np.uint8)), 0.2, atol=1e-6)
    np.testing.assert_allclose(pixels(np.full((1, 2, 2), 65535, np.uint16)), 1.0)
    b = np.array([[[True, False], [False, True]]])
    np.testing.assert_array_equal(pixels(b)[..., 0], [[1.0, 0.0], [0.0, 1.0]])


def test_floats_in_unit_range_are_kept():
    X = np.array([[[0.2, 0.7], [0.0, 0.5]]], dtype=np.float64)
    np.testing.assert_allclose(pixels(X)[..., 0], X[0], atol=1e-6)
    # also 0/1 integers (a binary mask), which lie in [0, 1]
    np.testing.assert_array_equal(pixels(np.array([[[0, 1], [1, 0]]]))[..., 0], [[0, 1], [1, 0]])


def test_other_ranges_are_min_max_scaled_per_image():
    X = np.zeros((3, 2, 2))
    X[0] = [[0, 8], [16, 16]]  # load_digits range
    X[1] = [[-2, 2], [0, 0]]  # negative values
    X[2] = 5.0  # constant out of range -> all zeros
    np.testing.assert_allclose(pixels(X, 0)[..., 0], [[0, 0.5], [1, 1]], atol=1e-6)
    np.testing.assert_allclose(pixels(X, 1)[..., 0], [[0, 1], [0.5, 0.5]], atol=1e-6)
    np.testing.assert_allclose(pixels(X, 2), 0.0)
    # int64 (not uint8) 0..16 is scaled the same way
    np.testing.assert_allclose(pixels(X[:1].astype(np.int64)), pixels(X[:1]), atol=1e-6)


def test_alpha_arrays_are_composited_over_white():
    rgba = np.zeros((1, 2, 2, 4), np.uint8)
    rgba[0, 0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 0, 1] = (255, 0, 0, 0)  # fully transparent
    rgba[0, 1, 0] = (0, 0, 0, 51)  # 20 % black
    got = pixels(rgba)
    np.testing.assert_allclose(got[0, 0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(got[0, 1], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(got[1, 0], [0.8, 0.8, 0.8], atol=1e-6)
    gray_alpha = np.zeros((1, 2, 2, 2), np.uint8)  # black, fully transparent
    np.testing.assert_allclose(pixels(gray_alpha), 1.0)


# --------------------------------------------------------------------------- image modes


def test_rgba_la_and_palette_transparency_over_white(tmp_path):
    assert to_rgb(Image.new("RGBA", (3, 3), (255, 0, 0, 0))).getpixel((1, 1)) == (255, 255, 255)
    assert to_rgb(Image.new("RGBA", (3, 3), (255, 0, 0, 255))).getpixel((1, 1)) == (255, 0, 0)
    half = to_rgb(Image.new("RGBA", (3, 3), (0, 0, 0, 128))).getpixel((1, 1))
    assert all(abs(v - 127) <= 1 for v in half)
    assert to_rgb(Image.new("LA", (3, 3), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("LA", (3, 3), (0, 255))).getpixel((0, 0)) == (0, 0, 0)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0] + [0, 255, 0] * 255)
    pal.putpixel((3, 3), 1)
    pal.save(tmp_path / "pal.png", transparency=0)
    img = open_image(tmp_path / "pal.png")
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)  # transparent red -> white
    assert img.getpixel((3, 3)) == (0, 255, 0)
    # from files, through the source
    Image.new("RGBA", (5, 5), (0, 0, 255, 0)).save(tmp_path / "rgba.png")
    np.testing.assert_allclose(pixels([tmp_path / "rgba.png"]), 1.0)


def test_cmyk_grayscale_and_one_bit(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    r, g, b = open_image(tmp_path / "cmyk.jpg").getpixel((1, 1))
    assert r > 240 and g < 15 and b < 15
    gray = Image.new("L", (4, 4), 90)
    assert to_rgb(gray).getpixel((0, 0)) == (90, 90, 90)
    bits = Image.new("1", (4, 4), 0)
    bits.putpixel((2, 2), 1)
    bits.save(tmp_path / "bits.png")
    img = open_image(tmp_path / "bits.png")
    assert img.getpixel((0, 0)) == (0, 0, 0) and img.getpixel((2, 2)) == (255, 255, 255)


def test_16_bit_grayscale_is_min_max_scaled(tmp_path):
    ramp = (np.arange(16 * 24).reshape(16, 24) * 5 + 1000).astype(np.uint16)  # 1000..2915
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    raw = Image.open(tmp_path / "ramp16.png")
    assert raw.mode.startswith("I")
    # a plain convert("RGB") clips every 16-bit value above 255 to white
    assert np.asarray(raw.convert("RGB")).min() == 255
    got = np.asarray(open_image(tmp_path / "ramp16.png")).astype(int)
    assert got.min() == 0 and got.max() == 255
    assert len(np.unique(got)) > 200  # the ramp survives as a ramp
    assert (np.diff(got[..., 0].ravel()) >= 0).all()
    # 32-bit integer and float images follow the same rule
    for mode_arr in (ramp.astype(np.int32), ramp.astype(np.float32)):
        assert np.asarray(to_rgb(Image.fromarray(mode_arr))).max() == 255


def test_exif_rotated_jpeg(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert Image.open(tmp_path / "rotated.jpg").size == (40, 20)
    for loaded in (open_image(tmp_path / "rotated.jpg"), open_image(tmp_path / "rotated.jpg", 256)):
        assert loaded.size == (20, 40)  # transposed
        top, bottom = loaded.getpixel((10, 2)), loaded.getpixel((10, 37))
        assert top[0] > 200 and top[2] < 60  # the red half is now on top
        assert bottom[2] > 200 and bottom[0] < 60
    # an in-memory PIL image with the tag is rotated too
    assert to_rgb(Image.open(tmp_path / "rotated.jpg")).size == (20, 40)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(tmp_path / "anim.gif").n_frames == 3
    assert open_image(tmp_path / "anim.gif").getpixel((4, 4)) == (255, 0, 0)


def test_tiny_images(fitted_extractor, tmp_path):
    Image.new("RGB", (1, 1), (10, 200, 30)).save(tmp_path / "one.png")
    for X in ([tmp_path / "one.png"], [Image.new("L", (1, 1), 7), Image.new("RGB", (1, 300))]):
        F = fitted_extractor.transform(X)
        assert F.shape == (len(X), 1280) and np.isfinite(F).all()
    assert np.isfinite(fitted_extractor.transform(np.zeros((1, 1, 1), np.uint8))).all()


# --------------------------------------------------------------------------- unreadable files


@pytest.fixture
def bad_files(tmp_path, image_paths):
    """Three readable images and, at index 2, one of several kinds of broken file."""
    good = Path(image_paths[0]).read_bytes()  # a JPEG
    files = {
        "zero_bytes": b"",
        "text": b"this is not an image\n" * 20,
        "truncated": good[: len(good) // 2],
    }
    out = {}
    for name, data in files.items():
        p = tmp_path / f"{name}.jpg"
        p.write_bytes(data)
        out[name] = p
    return out


@pytest.mark.parametrize("kind", ["zero_bytes", "text", "truncated"])
def test_unreadable_file_raises_naming_it(kind, bad_files, fitted_extractor, image_paths):
    X = [image_paths[0], image_paths[1], str(bad_files[kind]), image_paths[5]]
    with pytest.raises(ItemLoadError) as info:
        fitted_extractor.transform(X)
    assert info.value.index == 2
    assert str(bad_files[kind]) in str(info.value)
    assert "item 2" in str(info.value)
    assert "on_error='warn'" in str(info.value)


@pytest.mark.parametrize("kind", ["zero_bytes", "text", "truncated"])
def test_unreadable_file_warn_gives_nan_row(kind, bad_files, fitted_extractor, image_paths):
    good = [image_paths[0], image_paths[1], image_paths[5]]
    X = good[:2] + [str(bad_files[kind])] + good[2:]
    ext = copy.deepcopy(fitted_extractor).set_params(on_error="warn")
    with pytest.warns(ItemLoadWarning, match=r"1 of 4 items") as record:
        F = ext.transform(X)
    assert str(bad_files[kind]) in str(record[0].message)
    assert F.shape == (4, 1280)
    assert np.isnan(F[2]).all()
    clean = fitted_extractor.transform(good)
    np.testing.assert_array_equal(np.delete(F, 2, axis=0), clean)


def test_truncated_jpeg_is_not_silently_padded(bad_files):
    with pytest.raises(OSError, match="(?i)truncated"):
        open_image(bad_files["truncated"])


def test_on_error_ignore_is_silent(bad_files, fitted_extractor, image_paths, recwarn):
    ext = copy.deepcopy(fitted_extractor).set_params(on_error="ignore")
    F = ext.transform([str(bad_files["text"]), image_paths[0]])
    assert np.isnan(F[0]).all() and np.isfinite(F[1]).all()
    assert not [w for w in recwarn if issubclass(w.category, ItemLoadWarning)]


def test_missing_file_names_path_and_index(image_paths, tmp_path):
    missing = str(tmp_path / "no_such_image.jpg")
    X = [image_paths[0], missing, image_paths[1]]
    with pytest.raises(ItemLoadError, match="1 of 3 image files not found") as info:
        as_image_source(X)
    assert f"1: {missing!r}" in str(info.value)
    assert info.value.index == 1 and info.value.item == missing


def test_missing_file_through_extractor(fitted_extractor, image_paths, tmp_path):
    missing = str(tmp_path / "gone.png")
    with pytest.raises(ItemLoadError, match="gone.png"):
        fitted_extractor.transform([image_paths[0], missing])
    ext = copy.deepcopy(fitted_extractor).set_params(on_error="warn")
    with pytest.warns(ItemLoadWarning, match="gone.png"):
        F = ext.transform([image_paths[0], missing])
    assert np.isfinite(F[0]).all() and np.isnan(F[1]).all()


# --------------------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    "X",
    [[], (), np.empty((0, 8, 8)), np.empty((0, 64)), pd.Series([], dtype=object)],
    ids=["list", "tuple", "array3d", "array2d", "series"],
)
def test_empty_input(X):
    with pytest.raises(InputError, match="empty"):
        as_image_source(X)


def test_wrong_array_rank():
    with pytest.raises(InputError, match="1-D numeric array.*Reshape your data"):
        as_image_source(np.zeros(5))
    with pytest.raises(InputError, match="5-D numeric array"):
        as_image_source(np.zeros((2, 3, 4, 5, 6)))
    with pytest.raises(InputError, match=r"4-D array of shape \(2, 7, 9, 11\)"):
        as_image_source(np.zeros((2, 7, 9, 11)))
    with pytest.raises(ItemLoadError, match=r"Item 1: got an array of shape \(2, 3, 4, 5\)"):
        as_image_source([np.zeros((4, 4)), np.zeros((2, 3, 4, 5))]).load(1)


def test_nan_in_arrays_names_the_row():
    X = np.random.default_rng(0).random((6, 4, 4))
    X[4, 1, 2] = np.nan
    with pytest.raises(InputError, match=r"first: \[4\]"):
        as_image_source(X)
    X[4, 1, 2] = np.inf
    with pytest.raises(InputError, match=r"NaN or infinity in 1 row\(s\), first: \[4\]"):
        as_image_source(X)
    items = [np.zeros((3, 3)), np.full((3, 3), np.nan)]
    with pytest.raises(ItemLoadError, match="Item 1 contains NaN") as info:
        as_image_source(items)
    assert info.value.index == 1


def test_none_item(image_paths):
    with pytest.raises(InputError, match="Item 1 is missing"):
        as_image_source([image_paths[0], None])
    with pytest.raises(InputError, match="Item 0 is missing"):
        as_image_source(pd.Series([math.nan, image_paths[0]]))


def test_mixed_item_types(image_paths, make_image):
    with pytest.raises(InputError, match="mixes item types") as info:
        as_image_source([image_paths[0], make_image((0, 0, 0))])
    assert "paths" in str(info.value) and "pil" in str(info.value)


def test_unsupported_items_and_containers(image_paths):
    with pytest.raises(InputError, match="Item 0 is a dict"):
        as_image_source([{"a": 1}])
    with pytest.raises(InputError, match="Unsupported input type"):
        as_image_source(42)
    with pytest.raises(InputError, match="single path"):
        as_image_source(image_paths[0])
    with pytest.raises(InputError, match="Complex"):
        as_image_source(np.zeros((2, 4, 4), dtype=complex))


def test_dataframe_with_two_string_columns(image_paths, fitted_extractor):
    df = pd.DataFrame({"a": image_paths[:2], "b": image_paths[2:4]})
    with pytest.raises(InputError, match="DataFrame with 2 columns") as info:
        as_image_source(df)
    assert "['a', 'b']" in str(info.value) and "ColumnTransformer" in str(info.value)
    ext = copy.deepcopy(fitted_extractor)
    with pytest.raises(InputError, match="DataFrame with 2 columns"):
        ext.fit(df)


# --------------------------------------------------------------------------- one resize path


@pytest.fixture(scope="module")
def large_photos(shared_data):
    """The JPEGs of ../shared/data with a short side of at least 512 px (12 of them)."""
    paths = sorted(
        p
        for p in shared_data.rglob("*")
        if p.suffix.lower() in (".jpg", ".jpeg") and min(Image.open(p).size) >= 512
    )
    assert len(paths) >= 10
    return paths


def _cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_every_container_of_the_same_pixels_gives_the_same_features(fitted_extractor, large_photos):
    """A path, the PIL image, its uint8 array and its float array: one resize for all.

    Before, paths were decoded in JPEG draft mode (cosine 0.980 to the PIL image) and arrays
    were resized by torch instead of Pillow (cosine down to 0.998)."""
    pils = [to_rgb(Image.open(p)) for p in large_photos]
    uint8 = [np.asarray(img) for img in pils]
    floats = [a.astype(np.float32) / 255.0 for a in uint8]
    chw = [torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))) for a in floats]
    reference = fitted_extractor.transform(pils)
    for name, X in [("paths", [str(p) for p in large_photos]), ("uint8 arrays", uint8),
                    ("float arrays", floats), ("float CHW tensors", chw)]:  # fmt: skip
        F = fitted_extractor.transform(X)
        cos = _cosines(F, reference)
        assert cos.min() >= 0.999, (name, cos.min())
        # the same 8-bit pixels, whatever the container: the same numbers
        np.testing.assert_allclose(F, reference, rtol=1e-4, atol=1e-4, err_msg=name)
    # data that is not 8-bit (here: a contrast change) is resampled in 32-bit float
    stretched = [a * 0.9 + 0.05 for a in floats]
    assert isinstance(as_image_source(stretched).load(0), torch.Tensor)
    assert np.isfinite(fitted_extractor.transform(stretched)).all()


def test_jpeg_draft_decoding_keeps_the_features(fitted_extractor, large_photos, tmp_path):
    """Draft (DCT-scaled) decoding only where the result stays 4x the resize target:
    a photo large enough for it gives the features of the full decode."""
    big = max(large_photos, key=lambda p: min(Image.open(p).size))
    img = to_rgb(Image.open(big))
    scale = 2300 / min(img.size)  # short side 2300: decoded at 1/2, still >= 4 x 256
    path = tmp_path / "large.jpg"
    img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC).save(
        path, quality=95
    )
    draft = fitted_extractor.transform_.draft_size()
    assert draft == 4 * fitted_extractor.transform_.data_config.resize_size
    reduced = open_image(path, draft)
    full = open_image(path)
    assert min(reduced.size) < min(full.size) and min(reduced.size) >= draft  # draft ran
    F_draft = fitted_extractor.transform([str(path)])
    F_full = fitted_extractor.transform([full])
    assert _cosines(F_draft, F_full).min() >= 0.999
    # a photo below the margin is decoded in full, whatever its size
    medium = open_image(large_photos[0], draft)
    assert medium.size == to_rgb(Image.open(large_photos[0])).size
