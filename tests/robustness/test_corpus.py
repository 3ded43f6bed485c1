"""A generated corpus of odd and broken image files through both estimators.

Each odd-but-valid file must give finite features (and a prediction); each
broken file must raise an error naming it, or give a NaN row with a warning
under ``on_error="warn"``, without changing the other rows.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin  # noqa: F401 - registers TIFF

from sktransfer import BackboneSpec, DataConfig, FineTuneClassifier, PretrainedFeatureExtractor
from sktransfer.exceptions import InputError, ItemLoadError, ItemLoadWarning

SMALL = BackboneSpec(
    arch="efficientnet_lite0",
    data_config=DataConfig(input_size=32, resize_size=None, mean=(0.5,) * 3, std=(0.5,) * 3),
)


def _rgb(w=37, h=23, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def _odd_files(root):
    """name -> path of valid images in unusual modes, sizes and containers."""
    files = {}

    def save(name, img, **kw):
        p = root / name
        img.save(p, **kw)
        files[name] = p

    base = Image.fromarray(_rgb())
    save("rgb.jpg", base)
    save("rgba.png", base.convert("RGBA"))
    save("la.png", base.convert("LA"))
    pal = base.convert("P")
    pal.info["transparency"] = 0
    save("p_transparent.png", pal, transparency=0)
    save("p.gif", base.convert("P"))
    save("cmyk.jpg", base.convert("CMYK"))
    save("gray.png", base.convert("L"))
    save("one_bit.png", base.convert("1"))
    save("i16.png", Image.fromarray((np.arange(23 * 37).reshape(23, 37) * 40).astype(np.uint16)))
    save("i32.tif", Image.fromarray((np.arange(23 * 37).reshape(23, 37) * 1000).astype(np.int32)))
    save("float.tif", Image.fromarray(np.linspace(-5, 5, 23 * 37, dtype=np.float32).reshape(23, 37)))
    save("one_pixel.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    save("tall.png", Image.fromarray(_rgb(3, 300)))
    save("wide.png", Image.fromarray(_rgb(400, 2)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    save("exif_rotated.jpg", Image.fromarray(_rgb(60, 20)), exif=exif)
    frames = [Image.fromarray(_rgb(seed=s)) for s in range(3)]
    p = root / "animated.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    files["animated.gif"] = p
    p = root / "multipage.tif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    files["multipage.tif"] = p
    save("webp.webp", base)
    save("bmp.bmp", base)
    return files


def _broken_files(root):
    files = {}
    (root / "zero.jpg").write_bytes(b"")
    files["zero.jpg"] = root / "zero.jpg"
    (root / "text.jpg").write_text("this is not an image")
    files["text.jpg"] = root / "text.jpg"
    buf = io.BytesIO()
    Image.fromarray(_rgb(200, 200)).save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    files["truncated.jpg"] = root / "truncated.jpg"
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, format="PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[:60])
    files["truncated.png"] = root / "truncated.png"
    (root / "random.png").write_bytes(np.random.default_rng(0).bytes(2048))
    files["random.png"] = root / "random.png"
    return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return _odd_files(root), _broken_files(root)


@pytest.fixture(scope="module")
def ext():
    return PretrainedFeatureExtractor(SMALL, batch_size=4, precision="fp32").fit()


@pytest.fixture(scope="module")
def clf(corpus):
    good = [str(p) for p in list(corpus[0].values())[:6]]
    return FineTuneClassifier(SMALL, max_epochs=1, validation_split=None, verbose=0, random_state=0).fit(
        good, [0, 1] * 3
    )


def test_odd_files_give_finite_features_and_predictions(corpus, ext, clf, count_case):
    odd, _ = corpus
    paths = [str(p) for p in odd.values()]
    feats = ext.transform(paths)
    assert feats.shape == (len(paths), 1280) and np.isfinite(feats).all()
    assert set(clf.predict(paths)) <= {0, 1}
    count_case("odd files", len(paths))


def test_exif_orientation_and_first_frame(corpus, count_case):
    from sktransfer.io import open_image

    odd, _ = corpus
    assert open_image(odd["exif_rotated.jpg"]).size == (20, 60)  # transposed
    first = np.asarray(open_image(odd["animated.gif"]), dtype=float)
    gif0 = np.asarray(Image.open(odd["animated.gif"]).convert("RGB"), dtype=float)
    assert np.abs(first - gif0).mean() < 1
    page0 = np.asarray(open_image(odd["multipage.tif"]))
    np.testing.assert_array_equal(page0, _rgb(seed=0))
    count_case("orientation/frames", 3)


@pytest.mark.parametrize("name", ["zero.jpg", "text.jpg", "truncated.jpg", "truncated.png", "random.png"])
def test_broken_file_raise_and_warn(name, corpus, ext, count_case):
    odd, broken = corpus
    good = [str(p) for p in list(odd.values())[:5]]
    bad = str(broken[name])
    X = good[:2] + [bad] + good[2:]
    with pytest.raises(ItemLoadError, match=name.replace(".", r"\.")) as info:
        ext.transform(X)
    assert info.value.index == 2
    warn_ext = PretrainedFeatureExtractor(SMALL, batch_size=4, on_error="warn", precision="fp32").fit()
    with pytest.warns(ItemLoadWarning, match=name.replace(".", r"\.")):
        out = warn_ext.transform(X)
    assert np.isnan(out[2]).all()
    clean = ext.transform(good)
    np.testing.assert_allclose(np.delete(out, 2, 0), clean, rtol=1e-4, atol=1e-4)
    count_case("broken files", 2)


def test_decompression_bomb_is_refused_clearly(tmp_path, ext, monkeypatch, count_case):
    p = tmp_path / "bomb.png"
    Image.new("L", (300, 300)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 90,000 px is > 2x the limit
    with pytest.raises(ItemLoadError, match="bomb.png.*DecompressionBomb"):
        ext.transform([str(p)])
    count_case("decompression bomb")


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros((0, 8, 8)), "empty"),
        (np.zeros((2, 3, 4, 5, 6)), "5-D"),
        (np.zeros((2, 7, 8, 9)), "channels"),
        (np.full((2, 8, 8), np.nan), "NaN"),
        (np.full((2, 8, 8), np.inf), "NaN or infinity"),
        (np.array([[{"a": 1}, 2.0], [3.0, 4.0]], dtype=object), "argument must be"),
        ([], "empty"),
        ([None], "missing"),
        ([np.zeros((4, 4, 3)), "a.png"], "mixes item types"),
    ],
)
def test_bad_arrays_and_containers(X, match, ext, count_case):
    with pytest.raises((InputError, TypeError, ValueError), match=match):
        ext.transform(X)
    count_case("bad arrays/containers")


def test_many_modes_of_in_memory_images(ext, count_case):
    base = Image.fromarray(_rgb())
    imgs = [base.convert(m) for m in ("RGB", "RGBA", "LA", "L", "1", "P", "CMYK", "I", "F", "YCbCr", "HSV")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent fallback warnings either
        out = ext.transform(imgs)
    assert out.shape == (len(imgs), 1280) and np.isfinite(out).all()
    count_case("PIL modes", len(imgs))
