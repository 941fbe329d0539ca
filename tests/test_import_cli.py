"""`cnnrt import`, and `eval`/`info`/`convert` given another framework's file, end to end (in fresh
processes, except where Keras would be imported again for each: those go through cli.main here);
every bad input exits with status 2 and a message naming the file and the problem.

The Keras model here is the Deep MNIST net holding the shipped bundle's trained weights (moved to
Keras's layout by hand, not by the importer), so results are checked against Keras's own
predictions on real MNIST images.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import MNIST, ROOT, SHIPPED

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BUNDLE = SHIPPED / "deep_mnist.safetensors"
IMAGES = MNIST / "t10k-images-idx3-ubyte.gz"
LABELS = MNIST / "t10k-labels-idx1-ubyte.gz"
N = 300


def cnnrt(*args, code=0, pre="", env=None):
    """Run the command in a fresh process; `pre` is Python run first (to hide a package)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    if pre:
        cmd = [sys.executable, "-c", f"{pre}\nimport sys\nfrom cnnrt.cli import main\nsys.exit(main({list(args)!r}))"]
    else:
        cmd = [sys.executable, "-m", "cnnrt", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert p.returncode == code, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    if code == 2:
        assert "Traceback" not in p.stderr, p.stderr
    return p


HIDE = "import sys\nfor m in {mods!r}: sys.modules[m] = None"


def in_process(capsys, *args, code=0):
    """The same command through cli.main in this process (Keras is imported once, not per call)."""
    from cnnrt.cli import main

    capsys.readouterr()
    got = main(list(args))
    out, err = capsys.readouterr()
    assert got == code, f"exit {got}\n{out}\n{err}"
    return out, err


# ---------------------------------------------------------------- no framework needed

def test_wrong_suffix_is_named(tmp_path):
    f = tmp_path / "net.pt"
    f.write_bytes(b"PK\x03\x04 not a cnnrt file")
    p = cnnrt("info", str(f), code=2)
    assert f"{f}: cnnrt does not read .pt files" in p.stderr and "cnnrt.from_torch" in p.stderr


def test_missing_keras_extra_is_named(tmp_path):
    f = tmp_path / "m.keras"
    f.write_bytes(b"whatever")
    p = cnnrt("info", str(f), code=2, pre=HIDE.format(mods=["keras", "tensorflow"]))
    assert f"{f}: reading Keras files needs Keras and TensorFlow: pip install 'cnnrt[tensorflow]'" in p.stderr


def test_missing_onnx_extra_is_named(tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"whatever")
    p = cnnrt("eval", "--model", str(f), "--limit", "1", code=2, pre=HIDE.format(mods=["onnx"]))
    if importlib.util.find_spec("cnnrt.importers.onnx") is None:
        assert f"{f}: this cnnrt has no ONNX importer" in p.stderr
    else:
        assert str(f) in p.stderr and "pip install 'cnnrt[onnx]'" in p.stderr


def test_from_torch_without_torch_says_which_extra():
    code = ("import sys\nsys.modules['torch'] = None\nimport cnnrt\n"
            "try:\n    cnnrt.from_torch(None, None)\nexcept cnnrt.FormatError as e:\n    print(e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert "cnnrt.from_torch needs PyTorch: pip install 'cnnrt[torch]'" in p.stdout, p.stderr


def test_import_bundle_with_labels_and_normalisation(tmp_path):
    from cnnrt import backends
    from cnnrt.formats import load_model

    out = tmp_path / "relabelled.safetensors"
    names = [f"digit {i}" for i in range(10)]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    p = cnnrt("import", str(BUNDLE), str(out), "--labels", str(tmp_path / "labels.txt"), "--name", "mnist2",
              "--input-scale", "1/255", "--mean", "0.5", "--std", "2")
    assert f"wrote {out}: mnist2" in p.stdout and "(labelled)" in p.stdout
    g = load_model(out)
    assert g.name == "mnist2" and g.labels == names
    # (p/255 - 0.5)/2 in canonical form: scale 1/510, mean 0.25
    assert g.preprocess == {"scale": pytest.approx(1 / 510), "mean": [pytest.approx(0.25)]}
    # the same network, fed (pixels/255 - 0.5)/2 as floats
    orig = backends.prepare(load_model(BUNDLE), "numpy", "fp32")
    pixels = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    want = orig.probabilities((pixels.astype(np.float32) / 255 - 0.5) / 2)
    got = backends.prepare(g, "numpy", "fp32").probabilities(pixels)
    assert np.abs(got - want).max() < 1e-5


def test_import_never_replaces_an_existing_file_unasked(tmp_path):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"someone else's file")
    p = cnnrt("import", str(BUNDLE), str(out), "--name", "first", code=2)
    assert f"{out}: exists; pass --force to replace it" in p.stderr
    assert out.read_bytes() == b"someone else's file"
    cnnrt("import", str(BUNDLE), str(out), "--name", "second", "--force")
    from cnnrt.formats import load_model

    assert load_model(out).name == "second"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary file left


def test_import_bad_options_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "x.safetensors"
    p = cnnrt("import", str(BUNDLE), str(out), "--labels", "a,b,c", code=2)
    assert "--labels: 3 class names for a model with 10 classes" in p.stderr
    p = cnnrt("import", str(BUNDLE), str(out), "--labels", str(tmp_path / "nope.txt"), code=2)
    assert "no such file" in p.stderr
    p = cnnrt("import", str(BUNDLE), str(out), "--mean", "0.1,0.2", code=2)
    assert "per-channel values of different lengths [2] for 1 channels" in p.stderr
    p = cnnrt("import", str(BUNDLE), str(out), "--std", "0", code=2)
    assert "std must be positive" in p.stderr
    p = cnnrt("import", str(BUNDLE), str(out), "--input-scale", "zero", code=2)
    assert "--input-scale: 'zero' is not a number" in p.stderr
    p = cnnrt("import", str(BUNDLE), str(tmp_path / "x.onnx"), code=2)
    assert "x.onnx: the destination must be a .safetensors file" in p.stderr
    p = cnnrt("import", str(tmp_path / "missing.keras"), str(out), code=2)
    assert "missing.keras: no such model file" in p.stderr
    assert list(tmp_path.iterdir()) == [], "a failed import left files behind"


def test_info_backend_shows_the_fused_stages():
    """The plan `cnnrt eval` would run: the planner's compiled kernels where a C compiler is found,
    the staged engine's fused NumPy stages without one (or with CNNRT_STAGED=1)."""
    from cnnrt.backends import numpy_backend

    p = cnnrt("info", str(BUNDLE), "--backend", "numpy")
    lines = p.stdout.splitlines()
    assert any(line.startswith("Plan on numpy, fp32") for line in lines)
    if numpy_backend._compiled():
        assert any(line.split()[:3] == ["conv2", "Conv", "native.conv.direct+bias+relu"] for line in lines)
        assert any(line.split()[:3] == ["fc1", "Dense", "native.dense+bias+relu"] for line in lines)
        assert lines[-1].strip() == "11 nodes, 10 on compiled kernels; engine: the planner, set by the environment (graph)"
    p = cnnrt("info", str(BUNDLE), "--backend", "numpy", env={"CNNRT_STAGED": "1"})
    lines = p.stdout.splitlines()
    assert any("conv2 + pool2" in line and "Conv+Relu+MaxPool" in line and "Winograd" in line for line in lines)
    assert any(line.split()[:2] == ["fc2", "Dense"] for line in lines)


def test_eval_input_scale(tmp_path, mnist_test):
    """--input-scale replaces the bundle's: checked against the engine fed the scaled floats."""
    from cnnrt import backends
    from cnnrt.formats import load_model

    r = json.loads(cnnrt("eval", "--model", str(BUNDLE), "--limit", str(N), "--backend", "numpy", "--json",
                         "--input-scale", "1/2000").stdout)
    x, y = mnist_test[0][:N], mnist_test[1][:N]
    pred = backends.prepare(load_model(BUNDLE), "numpy", "fp32").predict(x.astype(np.float32) / 2000)
    assert r["correct"] == int((pred == y).sum())
    plain = json.loads(cnnrt("eval", "--model", str(BUNDLE), "--limit", str(N), "--backend", "numpy", "--json").stdout)
    assert r["correct"] != plain["correct"]  # the option does something
    p = cnnrt("eval", "--model", str(BUNDLE), "--input-scale", "-1", code=2)
    assert "--input-scale must be one positive number" in p.stderr


# ---------------------------------------------------------------- Keras files

keras_needed = pytest.mark.skipif(importlib.util.find_spec("keras") is None,
                                  reason="Keras is a test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    if importlib.util.find_spec("keras") is None:
        pytest.skip("Keras is a test extra")
    import keras

    from cnnrt.formats import load_model
    from cnnrt.train import build_keras_deep_mnist

    g = load_model(BUNDLE)
    p = g.params
    km = build_keras_deep_mnist(0)
    km.set_weights([p["conv1.weight"].transpose(1, 2, 3, 0), p["conv1.bias"],
                    p["conv2.weight"].transpose(1, 2, 3, 0), p["conv2.bias"],
                    p["fc1.weight"].T, p["fc1.bias"], p["fc2.weight"].T, p["fc2.bias"]])
    d = tmp_path_factory.mktemp("keras")
    km.save(d / "deep_mnist.keras")
    km.save(d / "deep_mnist.h5")
    L = keras.layers
    i = keras.Input((8, 8, 3))
    y = L.UpSampling2D(name="upsample")(L.Conv2D(4, 3, name="ok")(i))
    y = L.Conv3D(2, 1, name="volume")(L.Reshape((12, 12, 4, 1))(y))
    keras.Model(i, L.Flatten()(y)).save(d / "unknown.keras")
    i = keras.Input((4, 4, 1))
    keras.Model(i, L.Lambda(lambda t: t * 2, name="code")(i)).save(d / "lambda.keras")
    (d / "broken.keras").write_bytes(b"PK\x03\x04 this is no zip archive")
    return km, d


@keras_needed
def test_eval_a_keras_file_matches_keras(keras_files, mnist_test, capsys):
    km, d = keras_files
    x, y = mnist_test[0][:N], mnist_test[1][:N]
    keras_correct = int((np.asarray(km(x[..., None].astype(np.float32) / 255, training=False)).argmax(1) == y).sum())
    out, _ = in_process(capsys, "eval", "--model", str(d / "deep_mnist.keras"), "--limit", str(N), "--backend", "numpy",
                        "--json")
    r = json.loads(out)
    assert r["backend"] == "numpy" and r["images"] == N and r["accuracy"] > 0.97
    assert abs(r["correct"] - keras_correct) <= 1  # (a near-tie may fall either way)
    out, _ = in_process(capsys, "eval", "--model", str(d / "deep_mnist.h5"), "--limit", str(N), "--backend", "numpy",
                        "--json")
    assert abs(json.loads(out)["correct"] - keras_correct) <= 1


@keras_needed
def test_keras_file_round_trip_through_info_import_and_convert(keras_files, tmp_path, capsys):
    km, d = keras_files
    p = cnnrt("info", str(d / "deep_mnist.keras"), "--backend", "numpy")
    assert "deep_mnist: input (28, 28, 1) x 0.00392157" in p.stdout
    for node in ("conv1", "pool2", "fc1", "softmax"):
        assert f"\n  {node} " in p.stdout
    assert ("native.conv.direct" in p.stdout or "numpy fused conv" in p.stdout) and '"importer": "keras' in p.stdout
    out = tmp_path / "imported.safetensors"
    in_process(capsys, "import", str(d / "deep_mnist.keras"), str(out), "--labels",
               ",".join("zero one two three four five six seven eight nine".split()))
    in_process(capsys, "convert", str(d / "deep_mnist.h5"), str(tmp_path / "article"), "--to", "article")
    from cnnrt import backends
    from cnnrt.formats import load_model

    a, b = load_model(out), load_model(tmp_path / "article")
    assert a.labels[3] == "three"
    x = np.random.default_rng(1).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    want = np.asarray(km(x[..., None].astype(np.float32) / 255, training=False))
    for g in (a, b):
        assert np.abs(backends.prepare(g, "numpy", "fp32").probabilities(x) - want).max() < 1e-5


@keras_needed
def test_bad_keras_files_exit_2(keras_files, capsys):
    _, d = keras_files
    _, err = in_process(capsys, "info", str(d / "broken.keras"), code=2)
    assert f"{d / 'broken.keras'}: not a readable Keras model" in err
    _, err = in_process(capsys, "info", str(d / "unknown.keras"), code=2)
    assert f"{d / 'unknown.keras'}: " in err
    assert "2 layers cnnrt cannot convert: upsample (UpSampling2D); volume (Conv3D)" in err
    _, err = in_process(capsys, "eval", "--model", str(d / "lambda.keras"), code=2)
    assert f"{d / 'lambda.keras'}: not a readable Keras model" in err and "Lambda" in err


@keras_needed
def test_malformed_keras_file_is_one_plain_line(keras_files):
    """In a fresh process (TensorFlow imported there): stderr holds the one error line, without
    Keras's "File not found" for a file that is there and without TensorFlow's startup log lines."""
    _, d = keras_files
    f = d / "broken.keras"
    p = cnnrt("info", str(f), code=2)
    assert p.stderr.splitlines() == [
        f"cnnrt: error: {f}: not a readable Keras model (a .keras file is a zip archive; this file is not one)"]
    assert "File not found" not in p.stderr and p.stdout == ""


# ---------------------------------------------------------------- ONNX files

@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    """A small NCHW CNN written with onnx.helper (random weights), and ONNX Runtime's session on it."""
    if importlib.util.find_spec("cnnrt.importers.onnx") is None:
        pytest.skip("needs cnnrt.importers.onnx")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w = {"w1": rng.standard_normal((6, 1, 5, 5)) * 0.3, "b1": rng.standard_normal(6) * 0.1,
         "w2": rng.standard_normal((10, 6 * 14 * 14)) * 0.05, "b2": rng.standard_normal(10) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[2, 2, 2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("AveragePool", ["p"], ["a"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["a"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    f = tmp_path_factory.mktemp("onnx") / "small.onnx"
    onnx.save(model, str(f))
    return f, ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])


def test_onnx_file_through_eval_info_and_import(onnx_file, tmp_path, mnist_test):
    f, sess = onnx_file
    x, y = mnist_test[0][:N], mnist_test[1][:N]
    want = sess.run(None, {"x": x[:, None].astype(np.float32) / 255})[0]
    r = json.loads(cnnrt("eval", "--model", str(f), "--limit", str(N), "--backend", "numpy", "--json").stdout)
    assert r["correct"] == int((want.argmax(1) == y).sum())
    p = cnnrt("info", str(f), "--backend", "numpy")
    assert "input (28, 28, 1) x 0.00392157" in p.stdout and "Plan on numpy, fp32" in p.stdout
    out = tmp_path / "small.safetensors"
    cnnrt("import", str(f), str(out), "--mean", "0.1", "--std", "0.3", "--labels", ",".join("abcdefghij"))
    from cnnrt import backends
    from cnnrt.formats import load_model

    g = load_model(out)
    assert g.labels[1] == "b" and g.name == "small"
    pixels = x[:16]
    want = sess.run(None, {"x": ((pixels[:, None].astype(np.float32) / 255 - 0.1) / 0.3)})[0]
    got = backends.prepare(g, "numpy", "fp32").probabilities(pixels)
    assert np.abs(got - want).max() < 1e-5


def test_malformed_onnx_file_exits_2(tmp_path):
    if importlib.util.find_spec("cnnrt.importers.onnx") is None:
        pytest.skip("needs cnnrt.importers.onnx")
    f = tmp_path / "bad.onnx"
    f.write_bytes(b"\x08\x07garbage that is no protobuf")
    p = cnnrt("info", str(f), code=2)
    assert f"{f}: not a" in p.stderr


def _onnx_model(nodes, inputs, outputs, inits=()):
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_file_with_unsupported_ops_names_them_all(tmp_path):
    """Three ops cnnrt has no kernel for, spread through a chain it otherwise reads: one message
    names every one (node name and op type, in graph order), not just the first."""
    if importlib.util.find_spec("cnnrt.importers.onnx") is None:
        pytest.skip("needs cnnrt.importers.onnx")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones(4, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(4, np.float32), "beta"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv_ok", pads=[1, 1, 1, 1]),
             helper.make_node("InstanceNormalization", ["c", "gamma", "beta"], ["n"], name="inorm"),
             helper.make_node("Relu", ["n"], ["r"], name="relu_ok"),
             helper.make_node("Resize", ["r", "", "scales"], ["u"], name="upsample", mode="nearest"),
             helper.make_node("Hardmax", ["u"], ["y"], name="hmax", axis=1)]
    model = _onnx_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 16])], inits)
    onnx.checker.check_model(model, full_check=True)  # a valid model: what fails is cnnrt's coverage
    f = tmp_path / "unsupported.onnx"
    onnx.save(model, str(f))
    out = tmp_path / "x.safetensors"
    for args in (("info", str(f)), ("import", str(f), str(out))):
        p = cnnrt(*args, code=2)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, p.stderr
        assert (f"{f}: unsupported ONNX ops (opset 17): inorm (InstanceNormalization); upsample (Resize); "
                "hmax (Hardmax)") in lines[0]
        assert "conv_ok" not in lines[0] and "relu_ok" not in lines[0]
    assert not out.exists()


def test_onnx_file_with_a_dynamic_spatial_dimension_exits_2(tmp_path):
    """Only dimension 0 may be symbolic (the batch); a symbolic height cannot be resolved."""
    if importlib.util.find_spec("cnnrt.importers.onnx") is None:
        pytest.skip("needs cnnrt.importers.onnx")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["y"], name="gap")]
    model = _onnx_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", 28])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 1, 1])])
    onnx.checker.check_model(model, full_check=True)
    f = tmp_path / "dynamic_h.onnx"
    onnx.save(model, str(f))
    p = cnnrt("eval", "--model", str(f), "--limit", "1", code=2)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert (f"{f}: input 'x' has a dynamic dimension 2 ('H') in ['N', 1, 'H', 28]; cnnrt needs static shapes "
            "(only dimension 0 may be the batch)") in lines[0]
