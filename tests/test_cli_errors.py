"""Issue 11's "What does not" list, item by item: each wrong input is a clear error naming the
file and what was expected, exit status 2, no traceback; each right input gives the right answer,
checked against a float64 NumPy computation of the same model."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from cnnrt.formats import save_bundle
from cnnrt.idx import write_idx
from cnnrt.model import Dense, Model, Softmax

from cli_helpers import assert_clean_error, cnnrt, denied
from conftest import SHIPPED

BUNDLE = SHIPPED / "deep_mnist.safetensors"


def linear_model(rng, classes: int, shape=(28, 28, 1), name="linear") -> Model:
    n_in = int(np.prod(shape))
    w = (rng.standard_normal((classes, n_in)) * 0.05).astype(np.float32)
    b = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    return Model(shape, [Dense("fc", w, b, activation="none"), Softmax("softmax")], name=name)


def float64_labels(model: Model, x: np.ndarray) -> np.ndarray:
    """The independent reference: x * scale @ W.T + b in float64 (softmax keeps the argmax)."""
    d = model.layers[0]
    flat = x.reshape(len(x), -1).astype(np.float64) * model.input_scale
    return (flat @ d.weight.astype(np.float64).T + d.bias.astype(np.float64)).argmax(1)


# ---------------------------------------------------------------- 2. missing labels

def test_images_without_labels_is_an_error(tmp_path):
    write_idx(tmp_path / "mine.idx", np.zeros((3, 28, 28), np.uint8))
    p = cnnrt("eval", "--images", tmp_path / "mine.idx", check=False)
    assert_clean_error(p, "mine.idx needs --labels")
    assert "Accuracy" not in p.stdout


def test_labels_without_images_is_an_error(tmp_path):
    write_idx(tmp_path / "y.idx", np.zeros((10000,), np.uint8))
    assert_clean_error(cnnrt("eval", "--labels", tmp_path / "y.idx", check=False), "y.idx without --images")


# ---------------------------------------------------------------- 3. labels and the model's classes

def test_label_outside_a_five_class_model(tmp_path, rng):
    save_bundle(linear_model(rng, 5), tmp_path / "five.safetensors")
    write_idx(tmp_path / "x.idx", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8))
    y = rng.integers(0, 5, 20).astype(np.uint8)
    y[7] = 6
    write_idx(tmp_path / "y.idx", y)
    p = cnnrt("eval", "--model", tmp_path / "five.safetensors", "--images", tmp_path / "x.idx",
              "--labels", tmp_path / "y.idx", check=False)
    assert_clean_error(p, "y.idx: label 6 is outside the model's 5 classes (0..4")


def test_a_twelve_class_model_takes_label_eleven(tmp_path, rng):
    model = linear_model(rng, 12)
    save_bundle(model, tmp_path / "twelve.safetensors")
    x = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    want = float64_labels(model, x)
    y = want.copy()
    y[::3] = (y[::3] + 1) % 12  # a third wrong: the accuracy must come out at exactly 200/300
    y[0] = 11
    correct = int((want == y).sum())
    write_idx(tmp_path / "x.idx", x)
    write_idx(tmp_path / "y.idx", y.astype(np.uint8))
    r = json.loads(cnnrt("eval", "--model", tmp_path / "twelve.safetensors", "--images", tmp_path / "x.idx",
                         "--labels", tmp_path / "y.idx", "--backend", "numpy", "--json").stdout)
    assert r["images"] == 300 and r["correct"] == correct


# ---------------------------------------------------------------- 4. filesystem errors

def test_directory_where_an_images_file_is_expected(tmp_path):
    (tmp_path / "y.idx").write_bytes(b"")
    p = cnnrt("eval", "--images", tmp_path, "--labels", tmp_path / "y.idx", check=False)
    assert_clean_error(p, f"{tmp_path}: is a directory (expected an IDX file)")


def test_directory_where_a_bundle_file_is_expected_on_convert(tmp_path):
    (tmp_path / "out.safetensors").mkdir()
    p = cnnrt("convert", BUNDLE, tmp_path / "out.safetensors", "--to", "bundle", check=False)
    assert_clean_error(p, "out.safetensors: is a directory")


@pytest.mark.parametrize("command", ["eval", "info", "convert", "import"])
def test_a_directory_that_is_not_a_model(tmp_path, command):
    """Not "W_conv1: missing" (as if it were a damaged article directory): what it is not, plainly."""
    d = tmp_path / "photos"
    d.mkdir()
    (d / "cat.png").write_bytes(b"\x89PNG")
    args = {"eval": ["eval", "--model", d], "info": ["info", d], "convert": ["convert", d, tmp_path / "o", "--to", "bundle"],
            "import": ["import", d, tmp_path / "o.safetensors"]}[command]
    p = cnnrt(*args, check=False)
    assert_clean_error(p, f"{d}: a directory that is not a model: not a cnnrt bundle (.safetensors), an ONNX or "
                          f"Keras file (.onnx, .keras, .h5), nor an article-format directory")
    assert "W_conv1: missing" not in p.stderr and p.stderr.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["photos"]


def test_a_damaged_article_sidecar(tmp_path):
    """cnnrt.json beside the 8 raw files that is not the JSON object cnnrt writes: exit 2, naming it."""
    cnnrt("convert", BUNDLE, tmp_path / "art", "--to", "article")
    side = tmp_path / "art" / "cnnrt.json"
    side.write_text(side.read_text()[:-10])
    p = cnnrt("eval", "--model", tmp_path / "art", "--limit", "10", "--backend", "numpy", check=False)
    assert_clean_error(p, f"{side}: not valid JSON")
    assert p.stderr.count("\n") == 1


def test_file_where_a_directory_is_expected_on_convert(tmp_path):
    (tmp_path / "art").write_text("a file")
    p = cnnrt("convert", BUNDLE, tmp_path / "art", "--to", "article", check=False)
    assert_clean_error(p, "art: is a file (expected a directory)")
    assert (tmp_path / "art").read_text() == "a file"


def test_unreadable_images_file(tmp_path):
    write_idx(tmp_path / "x.idx", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "y.idx", np.zeros((2,), np.uint8))
    p = denied("eval", "--images", tmp_path / "x.idx", "--labels", tmp_path / "y.idx", read=[tmp_path / "x.idx"])
    assert_clean_error(p, "x.idx: cannot read (Permission denied)")


def test_unreadable_bundle_is_not_reported_as_missing(tmp_path):
    save_bundle(linear_model(np.random.default_rng(0), 3), tmp_path / "m.safetensors")
    p = denied("info", tmp_path / "m.safetensors", read=[tmp_path / "m.safetensors"])
    assert_clean_error(p, "m.safetensors: cannot read the model file (Permission denied)")
    (tmp_path / "d").mkdir()
    save_bundle(linear_model(np.random.default_rng(0), 3), tmp_path / "d" / "m.safetensors")
    p = denied("info", tmp_path / "d" / "m.safetensors", read=[tmp_path / "d"])
    assert_clean_error(p, "m.safetensors: cannot open the model (Permission denied)")
    assert "no such" not in p.stderr.lower()


def test_read_only_destination_for_convert(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    for to, dest in (("bundle", ro / "m.safetensors"), ("article", ro / "art")):
        p = denied("convert", BUNDLE, dest, "--to", to, write=[ro])
        assert_clean_error(p, f"{dest}: cannot write in {ro} (Permission denied)")
        assert os.listdir(ro) == []


def test_oserror_anywhere_is_reported_with_its_file(tmp_path, monkeypatch, capsys):
    """The catch-all in cli.main: an OSError our code did not foresee still names the file."""
    from cnnrt import cli

    def boom(a):
        raise PermissionError(13, "Permission denied", str(tmp_path / "f"))

    monkeypatch.setattr(cli, "cmd_info", boom)
    assert cli.main(["info"]) == 2
    assert capsys.readouterr().err == f"cnnrt: error: {tmp_path / 'f'}: Permission denied\n"


# ---------------------------------------------------------------- 5. bad values

def test_batch_size_zero():
    assert_clean_error(cnnrt("eval", "--limit", "10", "--batch-size", "0", check=False),
                       "--batch-size must be at least 1, got 0")


def test_bad_bundle_metadata_on_the_command_line(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(BUNDLE), "np") as f:
        desc = json.loads(f.metadata()["cnnrt"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for edit, message in (
        (lambda d: d["preprocess"].__setitem__("scale", "abc"), "preprocess scale must be a positive number, got 'abc'"),
        (lambda d: d["graph"]["nodes"][2]["attrs"].__setitem__("kernel_shape", "2x2"), "node 'pool1' (MaxPool)"),
        (lambda d: d["graph"].__setitem__("layout", "NCHW"), "layout 'NCHW' is not supported"),
        (lambda d: d.__setitem__("format", "other"), "unknown format \"other\""),
    ):
        bad = json.loads(json.dumps(desc))
        edit(bad)
        save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"cnnrt": json.dumps(bad)})
        p = cnnrt("eval", "--model", tmp_path / "bad.safetensors", "--limit", "5", check=False)
        assert_clean_error(p, f"{tmp_path / 'bad.safetensors'}: ", message)


# ---------------------------------------------------------------- 7. colour IDX images

def test_colour_images_on_a_three_channel_model(tmp_path, rng):
    model = linear_model(rng, 4, shape=(28, 28, 3), name="rgb")
    save_bundle(model, tmp_path / "rgb.safetensors")
    x = rng.integers(0, 256, (50, 28, 28, 3), dtype=np.uint8)
    y = float64_labels(model, x)
    y[:10] = (y[:10] + 1) % 4
    write_idx(tmp_path / "x.idx", x)
    write_idx(tmp_path / "y.idx", y.astype(np.uint8))
    r = json.loads(cnnrt("eval", "--model", tmp_path / "rgb.safetensors", "--images", tmp_path / "x.idx",
                         "--labels", tmp_path / "y.idx", "--backend", "numpy", "--json").stdout)
    assert r["images"] == 50 and r["correct"] == 40


def test_colour_images_on_a_one_channel_model(tmp_path, rng):
    write_idx(tmp_path / "x.idx", rng.integers(0, 256, (5, 28, 28, 3), dtype=np.uint8))
    write_idx(tmp_path / "y.idx", np.zeros(5, np.uint8))
    p = cnnrt("eval", "--images", tmp_path / "x.idx", "--labels", tmp_path / "y.idx", check=False)
    assert_clean_error(p, "x.idx: images of shape (28, 28, 3) (height, width, channels) do not fit "
                          "the model's input (28, 28, 1)")


# ---------------------------------------------------------------- 8. the batch size that ran

def even_chunk(n, cap):
    """The chunk the runner should pick for n images of at most cap on this machine's cores: as few
    chunks as fit, at least one per thread, and beyond that a multiple of the threads (so that no
    thread idles in the last round)."""
    from cnnrt.backends.numpy_backend import _cores

    t = _cores()
    count = max(-(-n // cap), min(t, n))
    if count > t:
        count = -(-count // t) * t
    return -(-n // count)


def test_eval_reports_the_batch_size_it_ran(tmp_path):
    """The numpy runner streams images in chunks of at most 256 over its threads; --batch-size
    below that sets the chunk. The report gives the chunk, not the 2048 it used to print."""
    from cnnrt.backends import numpy_backend

    r = json.loads(cnnrt("eval", "--limit", "600", "--backend", "numpy", "--json").stdout)
    assert r["batch_size"] == even_chunk(600, numpy_backend.CHUNK)  # on 2 threads: 4 chunks of 150
    r = json.loads(cnnrt("eval", "--limit", "600", "--backend", "numpy", "--batch-size", "100", "--json").stdout)
    assert r["batch_size"] == 100 and r["batch_size_requested"] == 100
    text = cnnrt("eval", "--limit", "600", "--backend", "numpy", "--batch-size", "5000").stdout
    assert f"Backend: numpy, fp32, batch size {even_chunk(600, numpy_backend.CHUNK)} (asked for 5000)" in text


def test_eval_on_the_gpu_planner_reports_the_batch_size_it_ran(monkeypatch, capsys):
    """cuda_graph.GraphRunner (the GPU planner; Deep MNIST in fp32 takes it) runs chunks of at most
    --batch-size images, or all of them in one chunk, and eval says so. In process, on the CPU fake
    of CuPy (cnnrt.testing.fake_cupy); the labels are checked against the NumPy backend's."""
    from cnnrt import cli
    from cnnrt.backends.cuda_graph import GraphRunner
    from cnnrt.testing import fake_cupy

    fake_cupy.install(monkeypatch)
    seen = []
    monkeypatch.setattr(GraphRunner, "_launch", lambda self, li, x, kind, _f=GraphRunner._launch:
                        seen.append(len(x)) or _f(self, li, x, kind))
    runs = {}
    for size in ("40", None):
        seen.clear()
        args = ["eval", "--backend", "cuda", "--precision", "fp32", "--limit", "100", "--json"]
        assert cli.main(args + (["--batch-size", size] if size else [])) == 0
        runs[size] = (json.loads(capsys.readouterr().out), list(seen))
    r, chunks = runs["40"]
    assert r["backend"] == "cuda" and r["kernels"].startswith("11 nodes") and chunks == [40, 40, 20]
    assert r["batch_size"] == 40 and r["batch_size_requested"] == 40
    r, chunks = runs[None]
    assert r["batch_size"] == 100 and r["batch_size_requested"] is None and chunks == [100]
    assert cli.main(["eval", "--backend", "numpy", "--limit", "100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["correct"] == r["correct"]


def test_session_reports_the_batch_size_it_ran(rng):
    import cnnrt as pkg

    s = pkg.load(BUNDLE, backend="numpy")
    assert s.batch_size_used is None
    s.predict(rng.integers(0, 256, (600, 28, 28), dtype=np.uint8))
    assert s.batch_size_used == even_chunk(600, 256)
    s.predict(rng.integers(0, 256, (600, 28, 28), dtype=np.uint8), batch_size=50)
    assert s.batch_size_used == even_chunk(600, 50)


def test_progress_does_not_change_the_numpy_path(random_model, rng, monkeypatch):
    """A progress callback (the text mode's bar) and none (--json, the warm runs) run the same
    chunks: one streaming call, never the per-batch loop of the base Runner."""
    from cnnrt import backends
    from cnnrt.backends import base, numpy_backend

    calls = []
    real = numpy_backend.NumpyRunner._forward_into
    monkeypatch.setattr(numpy_backend.NumpyRunner, "_forward_into",
                        lambda self, x, out, chunk=None, progress=None: (calls.append((len(x), chunk)),
                                                                         real(self, x, out, chunk, progress))[1])
    monkeypatch.setattr(base.Runner, "probabilities", lambda *a, **k: pytest.fail("per-batch path taken"))
    r = backends.prepare(random_model, "numpy")
    x = rng.integers(0, 256, (700, 28, 28), dtype=np.uint8)
    seen = []
    with_bar = r.predict(x, progress=seen.append)
    used_with = r.batch_size_used
    without = r.predict(x)
    assert calls == [(700, None), (700, None)] and used_with == r.batch_size_used
    np.testing.assert_array_equal(with_bar, without)
    assert seen == sorted(seen) and seen[-1] == 700


# ---------------------------------------------------------------- 9. files and metadata

def test_convert_modes_follow_the_umask_and_keep_name_and_provenance(tmp_path):
    p = cnnrt("convert", BUNDLE, tmp_path / "copy.safetensors", "--to", "bundle", umask=0o022)
    assert "model 'deep_mnist', with its provenance" in p.stdout
    assert stat.S_IMODE(os.stat(tmp_path / "copy.safetensors").st_mode) == 0o644
    info_src, info_copy = cnnrt("info", BUNDLE).stdout, cnnrt("info", tmp_path / "copy.safetensors").stdout
    assert info_copy == info_src and '"test_accuracy_keras": 0.9935' in info_copy
    cnnrt("convert", BUNDLE, tmp_path / "art", "--to", "article", umask=0o027)
    assert {stat.S_IMODE(os.stat(f).st_mode) for f in (tmp_path / "art").iterdir()} == {0o640}
    # article -> bundle: the 8 raw files alone (no sidecar cnnrt.json) keep no name; it comes from the directory
    cnnrt("convert", SHIPPED / "article", tmp_path / "back.safetensors", "--to", "bundle")
    assert cnnrt("info", tmp_path / "back.safetensors").stdout.startswith("deep_mnist: input (28, 28, 1)")


def test_convert_never_overwrites_without_force(tmp_path):
    dest = tmp_path / "m.safetensors"
    dest.write_bytes(b"precious")
    assert_clean_error(cnnrt("convert", BUNDLE, dest, "--to", "bundle", check=False),
                       f"{dest}: already exists (use --force to replace it)")
    assert dest.read_bytes() == b"precious" and os.listdir(tmp_path) == ["m.safetensors"]
    cnnrt("convert", BUNDLE, dest, "--to", "bundle", "--force")
    assert dest.read_bytes() == BUNDLE.read_bytes()


def test_a_closed_pipe_is_not_an_error():
    # `cnnrt info | head`: the reader goes away before cnnrt has written; cnnrt stops quietly
    import subprocess
    import sys

    from cli_helpers import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "cnnrt", "info", "--backend", "numpy"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env, cwd=ROOT)
    p.stdout.close()  # before the child writes: its first write meets a closed pipe
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "Broken pipe" not in err and "error" not in err, err

