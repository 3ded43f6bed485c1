"""sktransfer.datasets.load_image_folder."""

import os

import numpy as np
import pytest
from sklearn.utils import Bunch

from sktransfer.datasets import load_image_folder
from sktransfer.exceptions import InputError


def test_generated_folder(image_folder, image_paths, folder_classes, image_labels):
    ds = load_image_folder(image_folder)
    assert isinstance(ds, Bunch)
    assert ds.target_names == folder_classes == ["blue", "red"]
    # notes.txt and the hidden folder are skipped; files are sorted within each class
    assert ds.data.tolist() == image_paths
    assert ds.data.dtype == object
    assert ds.target.dtype == np.int64
    assert ds.target.tolist() == image_labels.tolist() == [0] * 4 + [1] * 4
    assert ds.root == str(image_folder)
    assert all(os.path.isfile(p) for p in ds.data)


def test_return_X_y(image_folder):
    X, y = load_image_folder(image_folder, return_X_y=True)
    ds = load_image_folder(image_folder)
    np.testing.assert_array_equal(X, ds.data)
    np.testing.assert_array_equal(y, ds.target)


def test_nested_subfolders_belong_to_their_class(tmp_path, make_image):
    (tmp_path / "a" / "deeper").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    make_image((0, 0, 0)).save(tmp_path / "a" / "deeper" / "x.png")
    make_image((0, 0, 0)).save(tmp_path / "b" / "y.JPG")  # extension case does not matter
    ds = load_image_folder(tmp_path)
    assert ds.target_names == ["a", "b"]
    assert [os.path.basename(p) for p in ds.data] == ["x.png", "y.JPG"]
    assert ds.target.tolist() == [0, 1]


def test_flat_folder_is_one_class(tmp_path, make_image):
    for i in range(3):
        make_image((9, 9, 9), seed=i).save(tmp_path / f"{i}.png")
    ds = load_image_folder(tmp_path)
    assert len(ds.data) == 3
    assert ds.target.tolist() == [0, 0, 0]
    assert ds.target_names == [tmp_path.name]


def test_hymenoptera_counts(hymenoptera):
    train = load_image_folder(hymenoptera / "train")
    val = load_image_folder(hymenoptera / "val")
    assert train.target_names == val.target_names == ["ants", "bees"]
    assert np.bincount(train.target).tolist() == [124, 121]
    assert np.bincount(val.target).tolist() == [70, 83]
    assert len(train.data) == 245 and len(val.data) == 153
    # the GIF placeholder and the .jpeg file are listed like the .jpg files
    names = {os.path.basename(p) for p in train.data}
    assert "imageNotFound.gif" in names
    assert any(n.endswith(".jpeg") for n in names)


def test_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match="not found") as info:
        load_image_folder(missing)
    assert str(missing) in str(info.value)


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="No image files"):
        load_image_folder(tmp_path)


def test_class_folders_without_images(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="No image files"):
        load_image_folder(tmp_path)
