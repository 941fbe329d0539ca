"""Every `cnnrt` command end to end, in fresh processes: --version, --help, eval, info, convert,
bench, train (on a small slice, written all or nothing), and the progress bars on a terminal."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest

from cli_helpers import ROOT, assert_clean_error, cnnrt
from conftest import SHIPPED

BUNDLE = SHIPPED / "deep_mnist.safetensors"
COMMANDS = ("eval", "info", "convert", "bench", "train")


def test_version():
    import cnnrt as pkg

    out = cnnrt("--version").stdout
    assert re.fullmatch(r"cnnrt \d+\.\d+\.\d+\S*\n", out) and out == f"cnnrt {pkg.__version__}\n"


def test_help_lists_every_command():
    out = cnnrt("--help").stdout
    assert all(c in out for c in COMMANDS) and "--version" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    out = cnnrt(command, "--help").stdout
    assert out.startswith(f"usage: cnnrt {command}")


def test_no_command_is_a_usage_error():
    p = cnnrt(check=False)
    assert p.returncode == 2 and "usage: cnnrt" in p.stderr and "Traceback" not in p.stderr


def test_eval_from_another_directory(tmp_path):
    """The defaults (the shipped model and test set) are package data: any working directory."""
    r = json.loads(cnnrt("eval", "--limit", "200", "--backend", "numpy", "--json", cwd=tmp_path).stdout)
    assert r["images"] == 200 and r["accuracy"] >= 0.98
    assert r["model"] == str(BUNDLE)


def test_info_and_convert_round_trip(tmp_path):
    cnnrt("convert", BUNDLE, tmp_path / "art", "--to", "article")
    cnnrt("convert", tmp_path / "art", tmp_path / "b.safetensors", "--to", "bundle")
    a = cnnrt("info", BUNDLE).stdout.splitlines()
    b = cnnrt("info", tmp_path / "b.safetensors").stdout.splitlines()
    # the layers, parameters and FLOPs agree; the name comes from the directory, no provenance
    n = len(a) - 1 - a[::-1].index(next(line for line in a if "parameters" in line))  # nodes and totals; meta after
    assert a[1:n + 1] == b[1:n + 1] and b[0].startswith("art: input (28, 28, 1)") and len(b) == n + 1
    x = json.loads(cnnrt("eval", "--model", tmp_path / "b.safetensors", "--limit", "300", "--json").stdout)
    y = json.loads(cnnrt("eval", "--limit", "300", "--json").stdout)
    assert x["correct"] == y["correct"]


# ---------------------------------------------------------------- train

def _tree(d) -> dict:
    """Every file under d with its bytes and modification time."""
    out = {}
    for root, _, files in os.walk(d):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, d)] = (open(p, "rb").read(), os.stat(p).st_mtime_ns)
    return out


TRAIN = ("train", "--epochs", "1", "--limit", "2000", "--test-limit", "1000")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "model"
    p = cnnrt(*TRAIN, "--out", out, timeout=600)
    return out, p


def test_train_writes_both_formats_and_training_json(trained):
    out, p = trained
    assert sorted(os.listdir(out)) == ["article", "deep_mnist.safetensors", "training.json"]
    assert sorted(os.listdir(out / "article")) == sorted(
        ["W_conv1", "b_conv1", "W_conv2", "b_conv2", "W_fc1", "b_fc1", "W_fc2", "b_fc2"])
    assert not [f for f in os.listdir(out.parent) if f != "model"], "temporary files left beside the output"
    meta = json.loads((out / "training.json").read_text())
    assert meta["train_images"] == 1800 and meta["validation_images"] == 200 and meta["test_images"] == 1000
    m = re.search(r"Test accuracy \(Keras, 1000 images\): (0\.\d{4})", p.stdout)
    assert m, p.stdout
    keras_acc = float(m.group(1))
    assert keras_acc == round(meta["test_accuracy_keras"], 4) and keras_acc > 0.5  # 1 epoch on 1,800 images
    # cnnrt runs the exported files and gets TensorFlow's accuracy on the same images, from both formats
    for model in (out / "deep_mnist.safetensors", out / "article"):
        r = json.loads(cnnrt("eval", "--model", model, "--limit", "1000", "--backend", "numpy", "--json").stdout)
        assert abs(r["accuracy"] - keras_acc) <= 0.003, (model, r["accuracy"], keras_acc)
    info = cnnrt("info", out / "deep_mnist.safetensors").stdout
    assert '"train_images": 1800' in info and re.search(r"softmax\s+Softmax", info)


def test_train_never_touches_an_existing_model(trained):
    out, _ = trained
    before = _tree(out)
    p = cnnrt(*TRAIN, "--out", out, check=False)
    assert_clean_error(p, f"{out}: already holds article, deep_mnist.safetensors, training.json",
                       "use --force")
    assert "Test accuracy" not in p.stdout  # refused before training, not after
    assert _tree(out) == before and sorted(os.listdir(out.parent)) == ["model"]


def test_a_failed_train_leaves_nothing(tmp_path):
    """Bad test labels are found after the temporary directory is made: it goes, nothing else appears."""
    from cnnrt.idx import write_idx

    write_idx(tmp_path / "y.idx", np.full(10000, 12, np.uint8))
    out = tmp_path / "out"
    p = cnnrt(*TRAIN, "--out", out, "--test-images", ROOT / "data/mnist/t10k-images-idx3-ubyte.gz",
              "--test-labels", tmp_path / "y.idx", check=False)
    assert_clean_error(p, "y.idx: label 12 is outside the model's 10 classes")
    assert sorted(os.listdir(tmp_path)) == ["y.idx"]


def test_a_train_failing_while_writing_leaves_the_old_files(tmp_path, monkeypatch):
    """In process: the export fails after the bundle is written (the staging directory holds it);
    the existing model in --out stays byte for byte, and no temporary file is left."""
    pytest.importorskip("tensorflow")
    from cnnrt import formats, train

    out = tmp_path / "out"
    out.mkdir()
    for name in ("deep_mnist.safetensors", "training.json"):
        (out / name).write_bytes(b"the old model")
    before = _tree(out)

    def fail(*a, **k):
        raise OSError(28, "No space left on device", "article")

    monkeypatch.setattr(formats, "save_article", fail)
    with pytest.raises(OSError, match="No space left"):
        train.train(ROOT / "data/mnist/train-images-idx3-ubyte.gz", ROOT / "data/mnist/train-labels-idx1-ubyte.gz",
                    ROOT / "data/mnist/t10k-images-idx3-ubyte.gz", ROOT / "data/mnist/t10k-labels-idx1-ubyte.gz",
                    out, epochs=1, limit=300, test_limit=100, force=True, quiet=True)
    assert _tree(out) == before and sorted(os.listdir(tmp_path)) == ["out"]


def test_train_without_out_is_a_usage_error():
    p = cnnrt("train", "--epochs", "1", check=False)
    assert p.returncode == 2 and "--out" in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------- progress bars

def _with_terminal_stderr(*args) -> tuple[str, str]:
    """Run cnnrt with stderr on a pseudo-terminal (as in a person's shell) and stdout on a pipe."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # 30 rows, 100 columns
    p = subprocess.Popen([sys.executable, "-m", "cnnrt", *map(str, args)], stdout=subprocess.PIPE, stderr=slave,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        err += chunk
    out = p.stdout.read().decode()
    assert p.wait(timeout=300) == 0, err.decode(errors="replace")
    os.close(master)
    return out, err.decode(errors="replace")


def test_eval_progress_bar_on_a_terminal_only():
    pytest.importorskip("tqdm")
    out, err = _with_terminal_stderr("eval", "--limit", "3000", "--backend", "numpy")
    assert re.search(r"eval: +\d+%\|.*\| *\d+/3000 ", err), err  # tqdm's bar (updates are at most 10 a second)
    assert "Accuracy: " in out and "eval:" not in out
    out, err = _with_terminal_stderr("eval", "--limit", "3000", "--backend", "numpy", "--quiet")
    assert "eval:" not in err and "Accuracy: " in out
    piped = cnnrt("eval", "--limit", "3000", "--backend", "numpy")
    assert "eval:" not in piped.stderr


def test_bench_tiny_run_without_peers_with_its_progress_bar():
    """`cnnrt bench` end to end (cnnrt alone, a few hundred images), on a terminal: the table on
    stdout, the log lines and the bar over the rounds on stderr."""
    pytest.importorskip("tqdm")
    out, err = _with_terminal_stderr("bench", "--quick", "--peers", "none", "--no-cold", "--sizes", "200",
                                     "--rounds", "2", "--batch-size", "100", "--latency-calls", "2")
    assert re.search(r"bench: +\d+%\|.*\| *\d/2 ", err) and "round 2/2: cnnrt" in err, err
    assert re.search(r"^cnnrt numpy fp32 +100 ", out, re.M), out
