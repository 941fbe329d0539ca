"""Every `cnnrt` command end to end, in fresh processes: --version, --help, eval, info, convert,
bench, train (on a small slice, written all or nothing), import, and the progress bars on a terminal."""
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
COMMANDS = ("eval", "info", "convert", "bench", "serve", "train", "predict", "import", "batch")


def test_version():
    import cnnrt as pkg

    out = cnnrt("--version").stdout
    assert re.fullmatch(r"cnnrt \d+\.\d+\.\d+\S*\n", out) and out == f"cnnrt {pkg.__version__}\n"


def test_help_lists_every_command():
    out = cnnrt("--help").stdout
    assert all(c in out for c in COMMANDS) and "--version" in out
    from cnnrt.cli import build_parser  # and COMMANDS is every command the parser has

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert sorted(sub.choices) == sorted(COMMANDS)


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


def _bundle_description(path) -> dict:
    """The cnnrt JSON a bundle holds, read with safetensors alone (not through cnnrt)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        return json.loads(f.metadata()["cnnrt"])


def test_info_and_convert_round_trip(tmp_path):
    """bundle -> article -> bundle keeps the weights, the name and the provenance (the article's
    8 raw files have no place for the last two: the sidecar cnnrt.json carries them)."""
    from safetensors.numpy import load_file

    p = cnnrt("convert", BUNDLE, tmp_path / "art", "--to", "article")
    assert "cnnrt.json with the name 'deep_mnist' and the provenance" in p.stdout
    cnnrt("convert", tmp_path / "art", tmp_path / "b.safetensors", "--to", "bundle")
    src, back = _bundle_description(BUNDLE), _bundle_description(tmp_path / "b.safetensors")
    assert back["name"] == src["name"] == "deep_mnist" and back["meta"] == src["meta"]
    assert src["meta"]["test_accuracy_keras"] == 0.9935  # the shipped model's own provenance, not an empty one
    want, got = load_file(str(BUNDLE)), load_file(str(tmp_path / "b.safetensors"))
    assert sorted(want) == sorted(got) and all(np.array_equal(want[k], got[k]) for k in want)
    a = cnnrt("info", BUNDLE).stdout
    assert cnnrt("info", tmp_path / "b.safetensors").stdout == a == cnnrt("info", tmp_path / "art").stdout
    # without the sidecar the 8 files still load: the same layers, named after the directory, no provenance
    (tmp_path / "art" / "cnnrt.json").unlink()
    a, c = a.splitlines(), cnnrt("info", tmp_path / "art").stdout.splitlines()
    n = len(a) - 1 - a[::-1].index(next(line for line in a if "parameters" in line))  # nodes and totals; meta after
    assert a[1:n + 1] == c[1:n + 1] and c[0].startswith("art: input (28, 28, 1)") and len(c) == n + 1
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
        ["W_conv1", "b_conv1", "W_conv2", "b_conv2", "W_fc1", "b_fc1", "W_fc2", "b_fc2", "cnnrt.json"])
    # stdout is a pipe here: Keras's per-epoch bar is not drawn, only cnnrt's two lines are printed
    assert re.fullmatch(r"Test accuracy \(Keras, 1000 images\): 0\.\d{4}\nExported [^\n]+training\.json\n", p.stdout), p.stdout
    assert "loss" not in p.stdout + p.stderr and "Epoch" not in p.stdout + p.stderr
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
    # the article copy keeps the name and provenance too (its node names are the layer chain's own)
    art = cnnrt("info", out / "article").stdout
    assert art.split(":")[0] == info.split(":")[0] == "deep_mnist"
    art_meta = json.loads(art[art.index("\n{"):])
    assert art_meta == json.loads(info[info.index("\n{"):]) and meta.items() <= art_meta.items()


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


def test_keras_draws_its_bar_only_on_a_terminal_without_quiet():
    """The verbosity train gives Keras: its bar (1) on a terminal, nothing (0) in a pipe or with
    --quiet (the pipe end to end: test_train_writes_both_formats_and_training_json)."""
    from cnnrt.train import keras_verbose

    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    assert [keras_verbose(q, Stream(t)) for q, t in ((False, True), (True, True), (False, False), (True, False))] \
        == [1, 0, 0, 0]


def test_train_quiet_on_a_terminal_prints_no_keras_bar(tmp_path):
    """With stdout on a terminal Keras would draw its bar; --quiet leaves only cnnrt's lines."""
    pytest.importorskip("tensorflow")
    test_set = (ROOT / "data/mnist/t10k-images-idx3-ubyte.gz", ROOT / "data/mnist/t10k-labels-idx1-ubyte.gz")
    out = _with_terminal_stdout("train", "--epochs", "1", "--limit", "200", "--test-limit", "100", "--quiet",
                                "--images", test_set[0], "--labels", test_set[1], "--out", tmp_path / "m")
    lines = [line for line in out.replace("\r\n", "\n").split("\n") if line]
    assert len(lines) == 2 and lines[0].startswith("Test accuracy (Keras, 100 images): "), out
    assert lines[1].startswith("Exported ") and "step" not in out and "loss" not in out


def test_train_without_out_is_a_usage_error():
    p = cnnrt("train", "--epochs", "1", check=False)
    assert p.returncode == 2 and "--out" in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------- progress bars

def _on_terminal(stream: str, *args) -> tuple[str, str]:
    """Run cnnrt with `stream` ('stdout' or 'stderr') on a pseudo-terminal, as in a person's shell,
    and the other on a pipe; returns (what went to the terminal, what went to the pipe)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # 30 rows, 100 columns
    ends = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, stream: slave}
    p = subprocess.Popen([sys.executable, "-m", "cnnrt", *map(str, args)], **ends,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    os.close(slave)
    tty = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        tty += chunk
    piped = (p.stderr if stream == "stdout" else p.stdout).read().decode(errors="replace")
    assert p.wait(timeout=300) == 0, tty.decode(errors="replace") + piped
    os.close(master)
    return tty.decode(errors="replace"), piped


def _with_terminal_stderr(*args) -> tuple[str, str]:
    """(stdout on a pipe, stderr on a terminal)."""
    err, out = _on_terminal("stderr", *args)
    return out, err


def _with_terminal_stdout(*args) -> str:
    """What cnnrt wrote to stdout on a terminal (where Keras draws its bar)."""
    return _on_terminal("stdout", *args)[0]


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


# ---------------------------------------------------------------- import

def test_import_quiet_prints_nothing_and_writes_the_same_bundle(tmp_path):
    p = cnnrt("import", BUNDLE, tmp_path / "a.safetensors", "--name", "again")
    assert p.stdout.startswith(f"wrote {tmp_path / 'a.safetensors'}: again, input (28, 28, 1), 10 classes")
    q = cnnrt("import", BUNDLE, tmp_path / "q.safetensors", "--name", "again", "--quiet")
    assert q.stdout == "" and q.stderr == ""
    a, b = _bundle_description(tmp_path / "a.safetensors"), _bundle_description(tmp_path / "q.safetensors")
    assert a == b and b["name"] == "again" and b["meta"] == _bundle_description(BUNDLE)["meta"]
    assert_clean_error(cnnrt("import", tmp_path / "nothing.onnx", tmp_path / "x.safetensors", "--quiet", check=False),
                       "nothing.onnx")  # --quiet keeps the errors


def test_import_progress_bar_on_a_terminal_only(tmp_path):
    """The shipped model (13 MB) is past the size that gets a bar over import's four steps."""
    pytest.importorskip("tqdm")
    from cnnrt.import_cmd import BAR_MIN_BYTES

    assert BUNDLE.stat().st_size >= BAR_MIN_BYTES
    out, err = _with_terminal_stderr("import", BUNDLE, tmp_path / "a.safetensors")
    assert re.search(r"import: +\d+%\|.*\| *\d/4 ", err), err
    assert out.startswith("wrote ") and "import:" not in out
    out, err = _with_terminal_stderr("import", BUNDLE, tmp_path / "b.safetensors", "--quiet")
    assert out == "" and "import:" not in err
    assert "import:" not in cnnrt("import", BUNDLE, tmp_path / "c.safetensors").stderr  # a pipe: no bar
