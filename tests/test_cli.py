"""The command line: `sktransfer info`, `demo`, `extract`, `finetune`, `predict`, exit codes
and error reporting."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sktransfer import _runtime, cli
from sktransfer.demo import random_crops
from sktransfer.exceptions import DeviceError


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_info_lists_the_bundled_backbone(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.split()[:1] == ["efficientnet_lite0"])
    assert "available" in line.split()
    assert re.search(r"Device: (cpu|cuda)", out)
    assert re.search(r"torch\s+\d+\.\d+", out)
    assert re.search(r"scikit-learn\s+\d+\.\d+", out)
    if "Device: cpu" in out:  # the CPU, its precision flags and what precision="auto" picks
        cpu = _runtime.cpu_info()
        assert f"CPU: {cpu['model']}" in out
        expected = "bf16" if cpu["native_bf16"] else "fp32"
        assert f"precision='auto' extracts in {expected} on this CPU" in out


def test_info_json_is_machine_readable(capsys):
    assert cli.main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    lite0 = {b["name"]: b for b in report["backbones"]}["efficientnet_lite0"]
    assert lite0["available"] is True
    assert report["device"]["device"] in ("cpu", "cuda")
    assert report["versions"]["torch"]


def test_console_script_exit_codes_in_a_real_process():
    run = [sys.executable, "-m", "sktransfer.cli"]
    ok = subprocess.run([*run, "--version"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0
    assert ok.stdout.startswith("sktransfer ")
    bad = subprocess.run([*run, "no-such-command"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "invalid choice" in bad.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["no-such-command"],
        [],
        ["demo", "--precision", "fp64"],
        ["demo", "--batch-size", "0"],
        ["demo", "--n-digits", "many"],
        ["info", "--unknown-option"],
        ["extract", "photos"],  # -o is required
        ["extract", "photos", "-o", "f", "--pooling", "median"],
        ["extract", "photos", "-o", "f", "--shard-size", "0"],
        ["extract", "photos", "-o", "f", "--on-error", "skip"],
        ["finetune", "photos", "--unfreeze", "-1"],
        ["finetune", "photos", "--unfreeze", "some"],
        ["finetune", "photos", "--validation-split", "1.5"],
        ["finetune", "photos", "--augment", "heavy"],
        ["finetune", "photos", "--lr", "0"],
        ["predict", "model.joblib"],  # ROOT missing
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    assert "usage: sktransfer" in capsys.readouterr().err


def test_usage_error_found_after_parsing_exits_2(capsys):
    assert cli.main(["demo", "--n-digits", "5"]) == 2
    assert "--n-digits must be between 40 and 1797" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["info", "--help"]])
def test_help_exits_0(argv, capsys):
    assert cli.main(argv) == 0
    assert "usage: sktransfer" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["extract", "finetune", "predict"])
def test_help_of_each_command_has_examples(command, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: sktransfer {command}" in out
    examples = out.split("examples:\n", 1)[1]
    assert f"  sktransfer {command} " in examples  # lines kept as written, not re-wrapped


def test_usage_error_found_after_parsing_finetune_exits_2(capsys):
    assert cli.main(["finetune", "photos", "--early-stopping", "-1"]) == 2
    assert "--early-stopping must be >= 0" in capsys.readouterr().err


def test_help_lists_every_command(capsys):
    cli.main(["--help"])
    out = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert command.name in out


def test_runtime_error_is_one_line_on_stderr_with_exit_1(capsys):
    assert cli.main(["demo", "--device", "not-a-device", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("sktransfer demo: error: ")
    assert "not-a-device" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback():
    with pytest.raises(DeviceError, match="not-a-device"):
        cli.main(["demo", "--device", "not-a-device", "--debug"])


def test_demo_quick_prints_accuracies_well_above_chance(capsys):
    assert cli.main(["demo", "--quick", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out
    assert "features (80, 1280)" in out
    assert "features (20, 1280)" in out
    accuracy = dict(re.findall(r"accuracy \((test split|5-fold CV)\): ([0-9.]+)", out))
    assert float(accuracy["test split"]) >= 0.5  # digits, 10 classes: chance is 0.1
    assert float(accuracy["5-fold CV"]) >= 0.8  # crops of 2 photos: chance is 0.5
    assert re.search(r"^digits\s+80\s+80x1280", out, re.M)  # the summary table
    assert re.search(r"^crops\s+20\s+20x1280", out, re.M)


def test_random_crops_are_within_bounds_and_labelled_by_source():
    img = np.zeros((70, 90, 3), dtype=np.uint8)
    img[..., 0] = np.arange(70)[:, None]
    img[..., 1] = np.arange(90)[None, :]
    crops, y = random_crops([img, img[::-1]], 5, min_size=16, max_size=40, seed=3)
    assert y.tolist() == [0] * 5 + [1] * 5
    for c in crops:
        assert c.shape[0] == c.shape[1] and 16 <= c.shape[0] <= 40 and c.shape[2] == 3
        assert c.flags.c_contiguous
    again, _ = random_crops([img, img[::-1]], 5, min_size=16, max_size=40, seed=3)
    assert all((p == q).all() for p, q in zip(crops, again))


# --------------------------------------------------------------------------- extract, finetune, predict

# (class name, index of sklearn's sample photo): two photos, so the classes are easy to tell apart.
PHOTO_CLASSES = {"china": 0, "flower": 1}
PER_CLASS = 4


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """``root/<class>/<image>``: 2 classes x 4 small random crops of the two sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for cls, k in PHOTO_CLASSES.items():
        (root / cls).mkdir()
        for i in range(PER_CLASS):
            h, w = images[k].shape[:2]
            y, x = rng.integers(0, h - 96), rng.integers(0, w - 96)
            crop = Image.fromarray(images[k][y : y + 96, x : x + 96]).resize((40, 40))
            crop.save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def photo_paths(photos):
    return [str(photos / cls / f"{i}.png") for cls in PHOTO_CLASSES for i in range(PER_CLASS)]


@pytest.fixture(scope="module")
def extracted(photos, tmp_path_factory):
    """``sktransfer extract photos -o features.npy --shard-size 3``: 3 shards, run once."""
    out = tmp_path_factory.mktemp("extract") / "features.npy"
    argv = ["extract", str(photos), "-o", str(out), "--shard-size", "3", "--batch-size", "4"]
    assert cli.main([*argv, "--quiet"]) == 0
    return out, argv


@pytest.fixture(scope="module")
def finetuned(photos, tmp_path_factory):
    """``sktransfer finetune photos --epochs 1 ...``: the saved model and what was printed."""
    model = tmp_path_factory.mktemp("finetune") / "sub" / "model.joblib"
    argv = ["finetune", str(photos), "--epochs", "1", "--batch-size", "4", "--random-state", "0"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main([*argv, "-o", str(model)]) == 0
    return model, out.getvalue()


def _list_file(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_extract_writes_shards_a_consolidated_npy_and_paths(extracted, photo_paths):
    from sktransfer.shards import load_shards, shard_status

    out, _ = extracted
    shards = out.with_suffix(".shards")
    assert shard_status(shards) == {"done": 3, "total": 3, "complete": True}
    feats, items = load_shards(shards, return_items=True)
    assert items == photo_paths
    assert out.with_suffix(".paths.txt").read_text().splitlines() == photo_paths
    np.testing.assert_array_equal(np.load(out), feats)
    assert feats.shape == (len(photo_paths), 1280)


def test_extract_npy_equals_the_extractor_on_the_same_paths(extracted, photo_paths):
    from sktransfer import PretrainedFeatureExtractor

    expected = PretrainedFeatureExtractor().fit_transform(photo_paths)
    np.testing.assert_allclose(np.load(extracted[0]), expected, rtol=1e-4, atol=1e-4)


def test_extract_rerun_computes_only_the_missing_shard(extracted, tmp_path, capsys):
    from sktransfer.shards import shard_status

    out, argv = extracted
    folder = tmp_path / "features.shards"
    shutil.copytree(out.with_suffix(".shards"), folder)
    (folder / "shard-000002.npy").unlink()  # as if the run had stopped before the last shard
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.npy")}
    argv = [*argv[:3], str(tmp_path / "features.npy"), *argv[4:]]
    # without --quiet this time: progress output is not an extraction setting
    assert cli.main(argv) == 0
    assert shard_status(folder)["complete"]
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-00000[01].npy")} == kept
    out_text = capsys.readouterr().out
    assert "3 shard(s) (1 computed, 2 reused)" in out_text
    assert "shard 3/3: 2 items" in out_text
    np.testing.assert_array_equal(np.load(tmp_path / "features.npy"), np.load(out))


def test_extract_reads_a_list_file_relative_to_its_folder(photos, tmp_path, capsys):
    from sktransfer.shards import load_shards

    listing = _list_file(photos / "some.txt", ["# two images", "china/0.png", "", "flower/1.png"])
    try:
        assert cli.main(["extract", str(listing), "-o", str(tmp_path / "f"), "--quiet"]) == 0
    finally:
        listing.unlink()
    feats, items = load_shards(tmp_path / "f", return_items=True)
    assert items == [str(photos / "china" / "0.png"), str(photos / "flower" / "1.png")]
    assert feats.shape == (2, 1280)
    out = capsys.readouterr().out
    assert "Extracted 2 items -> 1280 features each, 1 shard(s)" in out
    assert "load_shards(" in out


def test_extract_ctrl_c_exits_130_and_keeps_finished_shards(
    photo_paths, tmp_path, monkeypatch, capsys
):
    from sktransfer import PretrainedFeatureExtractor
    from sktransfer.shards import shard_status

    real_transform = PretrainedFeatureExtractor.transform
    calls = []

    def interrupted_on_second_shard(self, X):
        calls.append(len(X))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_transform(self, X)

    monkeypatch.setattr(PretrainedFeatureExtractor, "transform", interrupted_on_second_shard)
    listing = _list_file(tmp_path / "list.txt", photo_paths[:3])
    argv = ["extract", str(listing), "-o", str(tmp_path / "f"), "--shard-size", "2", "--quiet"]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err
    assert "Run the same command again to resume" in err
    assert shard_status(tmp_path / "f") == {"done": 1, "total": 2, "complete": False}


def test_extract_no_resume_recomputes_every_shard(photo_paths, tmp_path, capsys):
    listing = _list_file(tmp_path / "list.txt", photo_paths[:1])
    argv = ["extract", str(listing), "-o", str(tmp_path / "f"), "--quiet"]
    assert cli.main(argv) == 0
    assert cli.main([*argv, "--no-resume"]) == 0
    assert "(1 computed, 0 reused)" in capsys.readouterr().out.splitlines()[-2]


def test_extract_into_a_folder_of_other_items_is_a_runtime_error(extracted, photo_paths, capsys):
    out, _ = extracted
    listing = _list_file(out.parent / "one.txt", photo_paths[:1])
    assert cli.main(["extract", str(listing), "-o", str(out.with_suffix(".shards"))]) == 1
    assert "already holds shards for other items" in capsys.readouterr().err


def test_extract_unreadable_image_is_an_error_or_a_counted_nan_row(photo_paths, tmp_path, capsys):
    (tmp_path / "broken.png").write_text("not an image")
    listing = _list_file(tmp_path / "list.txt", [photo_paths[0], "broken.png"])
    argv = ["extract", str(listing), "--quiet"]
    assert cli.main([*argv, "-o", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "Use --on-error warn" in err and err.count("\n") == 1
    assert cli.main([*argv, "-o", str(tmp_path / "b.npy"), "--on-error", "warn"]) == 0
    captured = capsys.readouterr()
    assert "1 item(s) could not be read: their rows are NaN" in captured.out
    assert captured.err.startswith("sktransfer: ItemLoadWarning: 1 of 2 items could not be read")
    feats = np.load(tmp_path / "b.npy")
    assert np.isfinite(feats[0]).all() and np.isnan(feats[1]).all()


def test_pooling_choices_match_the_backbone_module():
    from sktransfer.backbones import Pooling

    assert cli._POOLING_MODES == Pooling.MODES


def test_finetune_prints_the_epoch_table_and_accuracies(finetuned):
    model, out = finetuned
    assert model.is_file()
    assert "Fine-tuning on 6 images of 2 classes ['china', 'flower'], 2 held out" in out
    assert re.search(r"^\s+epoch\s+train_loss", out, re.M)  # skorch's per-epoch table
    scores = re.search(r"train accuracy ([0-9.]+), validation accuracy ([0-9.]+)", out)
    assert scores and 0 <= float(scores[1]) <= 1 and 0 <= float(scores[2]) <= 1


def test_predict_csv_equals_the_loaded_model(finetuned, photos, photo_paths, tmp_path, capsys):
    import joblib

    model, _ = finetuned
    csv_path = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(model), str(photos), "-o", str(csv_path), "--proba"]) == 0
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "prediction", "proba_china", "proba_flower"]
    assert [r["path"] for r in rows] == photo_paths
    expected = joblib.load(model).predict(photo_paths)
    assert [r["prediction"] for r in rows] == expected.tolist()
    proba = np.array([[float(r["proba_china"]), float(r["proba_flower"])] for r in rows])
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-4)
    truth = np.repeat(list(PHOTO_CLASSES), PER_CLASS)
    accuracy = np.mean(expected == truth)
    assert f"Accuracy: {accuracy:.3f} ({round(accuracy * len(truth))}/{len(truth)})" in (
        capsys.readouterr().out
    )


def test_console_script_predicts_a_list_file_to_stdout(finetuned, photo_paths, tmp_path):
    import joblib

    model, _ = finetuned
    script = Path(sys.executable).with_name("sktransfer")
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    listing = _list_file(tmp_path / "list.txt", photo_paths[::4])
    run = subprocess.run(
        [str(script), "predict", str(model), str(listing)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stderr
    rows = list(csv.reader(io.StringIO(run.stdout)))  # stdout holds the CSV and nothing else
    assert rows[0] == ["path", "prediction"]
    expected = joblib.load(model).predict(photo_paths[::4]).tolist()
    assert rows[1:] == [[p, c] for p, c in zip(photo_paths[::4], expected)]
    assert "Accuracy" not in run.stderr  # a list file has no labels


@pytest.mark.parametrize(
    "argv, message",
    [
        (["extract", "no/such/folder", "-o", "out"], "no/such/folder does not exist"),
        (["predict", "no-such-model.joblib", "."], "Model file not found: no-such-model.joblib"),
        (["finetune", "no/such/folder"], "no/such/folder is not a folder"),
    ],
)
def test_bad_root_or_model_is_exit_1_with_one_line(argv, message, capsys):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err


def test_finetune_needs_class_folders(photos, tmp_path, capsys):
    assert cli.main(["finetune", str(photos / "china"), "-o", str(tmp_path / "m")]) == 1
    assert "finetune needs at least 2" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_finetune_validation_split_too_small_is_explained(photos, tmp_path, capsys):
    argv = ["finetune", str(photos), "--validation-split", "0.1", "-o", str(tmp_path / "m")]
    assert cli.main(argv) == 1
    assert "--validation-split 0.1 cannot hold out every class" in capsys.readouterr().err


def test_empty_list_file_is_exit_1(tmp_path, capsys):
    listing = _list_file(tmp_path / "list.txt", ["# nothing"])
    assert cli.main(["extract", str(listing), "-o", str(tmp_path / "f")]) == 1
    assert "names no images" in capsys.readouterr().err


def test_predict_writes_multi_label_rows(photos, photo_paths, tmp_path):
    import joblib
    from torch import nn

    from sktransfer import BackboneSpec, DataConfig, FineTuneClassifier

    spec = BackboneSpec(
        module=nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()),
        data_config=DataConfig(input_size=16, resize_size=None),
    )
    Y = np.array([[i % 2, 1 - i % 2, 1] for i in range(len(photo_paths))])
    clf = FineTuneClassifier(spec, max_epochs=1, validation_split=None, verbose=0, random_state=0)
    model = tmp_path / "multi.joblib"
    joblib.dump(clf.fit(photo_paths, Y), model)
    csv_path = tmp_path / "predictions.csv"
    assert cli.main(["predict", str(model), str(photos), "-o", str(csv_path), "--proba"]) == 0
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "prediction", "proba_0", "proba_1", "proba_2"]
    expected = [";".join(map(str, r)) for r in clf.predict(photo_paths)]
    assert [r["prediction"] for r in rows] == expected
    proba = np.array([[float(r[f"proba_{j}"]) for j in range(3)] for r in rows])
    np.testing.assert_allclose(proba, clf.predict_proba(photo_paths), atol=1e-5)


def test_finetune_unfreeze_auto_chooses_on_the_held_out_images(photos, tmp_path, capsys):
    argv = ["finetune", str(photos), "--epochs", "1", "--batch-size", "4", "--random-state", "0"]
    assert cli.main([*argv, "--unfreeze", "auto", "--quiet", "-o", str(tmp_path / "m.joblib")]) == 0
    out = capsys.readouterr().out
    chosen = re.search(r"--unfreeze auto chose (\d) \(validation loss 1: [0-9.]+, 2: [0-9.]+\)", out)
    assert chosen and chosen[1] in ("1", "2")
    import joblib

    model = joblib.load(tmp_path / "m.joblib")
    assert model.unfreeze == "auto" and model.unfreeze_ == int(chosen[1])
    assert "valid_acc" in model.history_[-1]  # the held-out images stay the refit's validation
