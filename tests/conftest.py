"""Shared fixtures. Tests run offline: no weights are ever downloaded."""

import os

# Set before anything imports huggingface_hub/timm: with these, a hub lookup for weights
# that are not cached fails at once instead of retrying the network for ~45 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from _tolerances import FP32_TOLERANCE  # noqa: E402,F401 - the project convention
from PIL import Image  # noqa: E402

SHARED_DATA = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()

# (class name, RGB colour) of the generated folder; the classes are easy to tell apart.
FOLDER_CLASSES = {"blue": (20, 40, 230), "red": (230, 30, 20)}
FOLDER_PER_CLASS = 4


def _shared_subdir(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data sets (``../shared/data`` from the project root)."""
    return _shared_subdir()


@pytest.fixture(scope="session")
def hymenoptera(shared_data) -> Path:
    return _shared_subdir("hymenoptera")


@pytest.fixture(scope="session")
def imagenet_sample(shared_data) -> Path:
    return _shared_subdir("imagenet-sample-100")


@pytest.fixture(scope="session")
def fitted_extractor():
    """The default extractor in fp32, fitted once per session. Do not modify it in a test:
    ``copy.deepcopy`` it first (cheaper than a new fit).

    fp32, not the default ``precision="auto"``: that is bf16 on CPUs with native bf16 and
    fp32 elsewhere, and the features compared below must not depend on the CPU."""
    from sktransfer import PretrainedFeatureExtractor

    return PretrainedFeatureExtractor(precision="fp32").fit()


def _make_image(color, size=(48, 40), seed=0) -> Image.Image:
    """An RGB image of ``color`` with mild noise, so no two images are identical."""
    rng = np.random.default_rng(seed)
    arr = np.empty((size[1], size[0], 3), dtype=np.float64)
    arr[:] = color
    arr += rng.normal(0, 12, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="session")
def make_image():
    """``make_image(color, size=(w, h), seed=0)``: a noisy RGB PIL image of ``color``.

    (A fixture rather than an import: another ``conftest`` module may shadow this one.)
    """
    return _make_image


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """``root/<class>/<image>``: 2 classes x 4 images of various sizes and formats,
    plus a non-image file and a hidden folder that loaders must skip."""
    root = tmp_path_factory.mktemp("images")
    sizes = [(48, 40), (31, 64), (90, 70), (40, 40)]
    for c, (cls, color) in enumerate(FOLDER_CLASSES.items()):
        (root / cls).mkdir()
        for i in range(FOLDER_PER_CLASS):
            ext = ".png" if i % 2 else ".jpg"
            _make_image(color, sizes[i], seed=10 * c + i).save(root / cls / f"img{i}{ext}")
        (root / cls / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    _make_image((0, 0, 0)).save(root / ".hidden" / "skip.png")
    return root


@pytest.fixture(scope="session")
def image_paths(image_folder) -> list:
    """The image files of ``image_folder`` as sorted ``str`` paths (blue first, then red)."""
    return [str(p) for cls in FOLDER_CLASSES for p in sorted((image_folder / cls).glob("img*"))]


@pytest.fixture(scope="session")
def folder_classes() -> list:
    """Class names of ``image_folder``, sorted."""
    return sorted(FOLDER_CLASSES)


@pytest.fixture(scope="session")
def image_labels() -> np.ndarray:
    """Class index of each of ``image_paths``."""
    return np.repeat(np.arange(len(FOLDER_CLASSES)), FOLDER_PER_CLASS)
