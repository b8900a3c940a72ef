"""``examples/train_digits.py``: a shortened run learns, on the reference and fused backends.

optax and scikit-learn are declared test dependencies (the ``test`` extra): without them
these tests fail at import rather than skip.
"""

import importlib.util
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import optax  # noqa: F401  (a missing dependency fails here, loudly)
import pytest
import sklearn  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_digits.py"
EPOCHS = 3


def _short(epochs=EPOCHS, *extra):
    """A shortened run: few epochs, T = 4, 64 hidden neurons (a few seconds on a CPU)."""
    return ["--epochs", str(epochs), "--steps", "4", "--hidden", "64", "--seed", "0", *extra]


def _load_example():
    spec = importlib.util.spec_from_file_location("train_digits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_digits = _load_example()


@pytest.fixture(scope="module")
def short_run():
    lines = []
    metrics = train_digits.main(_short(EPOCHS, "--backend", "reference"), log=lines.append)
    return metrics, lines


def test_short_training_learns(short_run):
    metrics, _ = short_run
    losses = metrics["loss_history"]
    assert len(losses) == EPOCHS and all(math.isfinite(v) for v in losses)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # falls every epoch
    assert losses[-1] < 0.5 * losses[0], losses
    assert losses[0] < math.log(10) + 0.05  # started near chance, not diverged
    assert metrics["test_accuracy"] > 0.6, metrics["test_accuracy_history"]  # chance is 0.1
    assert metrics["test_accuracy"] == metrics["test_accuracy_history"][-1]
    assert metrics["backend"] == "reference"
    assert len(metrics["epoch_seconds"]) == EPOCHS and all(s > 0 for s in metrics["epoch_seconds"])


def test_prints_loss_accuracy_seconds_per_epoch(short_run):
    _, lines = short_run
    pattern = re.compile(rf"epoch +\d+/{EPOCHS} +loss \d+\.\d+ +test acc +\d+\.\d+% +\d+\.\d+ s")
    assert sum(bool(pattern.match(line)) for line in lines) == EPOCHS, lines


def test_fused_kernels_train_like_the_reference(short_run):
    """The interpreted Pallas scan kernels take the same training trajectory.

    Seeding does not depend on the epoch count, so a 2-epoch run repeats the first two
    epochs of the 3-epoch reference run."""
    reference, _ = short_run
    fused = train_digits.main(_short(2, "--backend", "interpret"), log=lambda *_: None)
    assert fused["backend"] == "interpret"
    np.testing.assert_allclose(fused["loss_history"], reference["loss_history"][:2], rtol=1e-3)
    np.testing.assert_allclose(fused["test_accuracy_history"],
                               reference["test_accuracy_history"][:2], atol=0.02)


def test_rate_coding_learns():
    metrics = train_digits.main(_short(EPOCHS, "--encoding", "rate"), log=lambda *_: None)
    assert metrics["loss_history"][-1] < metrics["loss_history"][0]
    assert metrics["test_accuracy"] > 0.5


def test_runs_as_a_script():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--epochs", "1", "--steps", "2", "--hidden", "16"],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "epoch   1/1" in proc.stdout and "final test accuracy" in proc.stdout


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as exc:
        train_digits.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--backend", "--epochs", "--steps", "--hidden", "--seed"):
        assert flag in out


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--surrogate", "bogus"],
                                  ["--backend", "cuda"], ["--test-size", "1.5"]])
def test_bad_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        train_digits.main(argv)
    assert exc.value.code == 2
