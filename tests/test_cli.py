"""The command line: `sktransfer info`, `sktransfer demo`, exit codes and error reporting."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from sktransfer import cli
from sktransfer.demo import random_crops


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
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    assert "usage: sktransfer" in capsys.readouterr().err


def test_usage_error_found_after_parsing_exits_2(capsys):
    assert cli.main(["demo", "--n-digits", "5"]) == 2
    assert "--n-digits must be between 20 and 1797" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["info", "--help"]])
def test_help_exits_0(argv, capsys):
    assert cli.main(argv) == 0
    assert "usage: sktransfer" in capsys.readouterr().out


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
    with pytest.raises(RuntimeError, match="not-a-device"):
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
