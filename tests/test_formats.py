import json

import numpy as np
import pytest

from cnnrt.errors import FormatError
from cnnrt.formats import ARTICLE_SIDECAR, ARTICLE_TENSORS, load_model, save_article, save_bundle
from cnnrt.model import deep_mnist

from conftest import random_deep_mnist_params


def tf_layout_weights(rng):
    """Random weights as TensorFlow holds them: conv (kh, kw, in, out), dense (in, out)."""
    return {
        "W_conv1": rng.standard_normal((5, 5, 1, 32)).astype(np.float32), "b_conv1": rng.standard_normal(32).astype(np.float32),
        "W_conv2": rng.standard_normal((5, 5, 32, 64)).astype(np.float32), "b_conv2": rng.standard_normal(64).astype(np.float32),
        "W_fc1": rng.standard_normal((3136, 1024)).astype(np.float32), "b_fc1": rng.standard_normal(1024).astype(np.float32),
        "W_fc2": rng.standard_normal((1024, 10)).astype(np.float32), "b_fc2": rng.standard_normal(10).astype(np.float32),
    }


def write_like_the_article(tf_w, directory):
    """The article's export, its transposes and reshapes written out as it gives them."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {
        "W_conv1": np.transpose(tf_w["W_conv1"], (3, 0, 1, 2)),
        "b_conv1": tf_w["b_conv1"],
        "W_conv2": np.transpose(tf_w["W_conv2"], (3, 0, 1, 2)),
        "b_conv2": tf_w["b_conv2"],
        "W_fc1": np.transpose(np.reshape(tf_w["W_fc1"], (7, 7, 64, 1024)), (3, 0, 1, 2)),
        "b_fc1": tf_w["b_fc1"],
        "W_fc2": np.transpose(np.reshape(tf_w["W_fc2"], (1, 1, 1024, 10)), (3, 0, 1, 2)),
        "b_fc2": tf_w["b_fc2"],
    }
    for name, t in out.items():
        with open(directory / name, "wb") as f:
            f.write(np.ascontiguousarray(t, dtype="<f4").tobytes())  # raw float32, C order


def test_article_format_read_exactly_as_written(tmp_path, rng):
    tf_w = tf_layout_weights(rng)
    write_like_the_article(tf_w, tmp_path / "m")
    m = load_model(tmp_path / "m")
    p = m.params
    for _ in range(200):  # element by element, from the TensorFlow tensors' own indices
        i, j, c, o = rng.integers(5), rng.integers(5), rng.integers(32), rng.integers(64)
        assert p["conv2.weight"][o, i, j, c] == tf_w["W_conv2"][i, j, c, o]
        assert p["conv1.weight"][o % 32, i, j, 0] == tf_w["W_conv1"][i, j, 0, o % 32]
        h, w, c64, u = rng.integers(7), rng.integers(7), rng.integers(64), rng.integers(1024)
        flat = (h * 7 + w) * 64 + c64  # TensorFlow's reshape of NHWC (7, 7, 64)
        assert p["fc1.weight"][u, flat] == tf_w["W_fc1"][flat, u]
        assert p["fc2.weight"][u % 10, u] == tf_w["W_fc2"][u, u % 10]
    for b in ("conv1", "conv2", "fc1", "fc2"):
        np.testing.assert_array_equal(p[f"{b}.bias"], tf_w[f"b_{b}"])


def test_article_and_bundle_roundtrip(tmp_path, random_model):
    save_article(random_model, tmp_path / "a")
    save_bundle(random_model, tmp_path / "b.safetensors")
    sizes = {f.name: f.stat().st_size for f in (tmp_path / "a").iterdir() if f.name != ARTICLE_SIDECAR}
    assert sizes == {n: 4 * int(np.prod(s)) for n, (_, s) in ARTICLE_TENSORS.items()}
    for m in (load_model(tmp_path / "a"), load_model(tmp_path / "b.safetensors")):
        for k, v in random_model.params().items():
            np.testing.assert_array_equal(m.params[k], v)
        assert m.input_shape == (28, 28, 1) and m.input_scale == pytest.approx(1 / 255)
        assert m.name == "random"


def test_article_sidecar_keeps_name_provenance_and_labels(tmp_path, rng):
    """The 8 raw files have no place for them: cnnrt.json beside them does, and without it the
    files still load (named after the directory, no provenance)."""
    from cnnrt.ir.chain import to_graph

    meta = {"command": "cnnrt train --dataset fashion-mnist", "test_accuracy_keras": 0.9, "per_1000": [1, 2]}
    labels = [f"class {i}" for i in range(10)]
    g = to_graph(deep_mnist(random_deep_mnist_params(rng), name="shoes", meta=meta))
    g.labels = labels
    save_article(g, tmp_path / "a")
    side = json.loads((tmp_path / "a" / ARTICLE_SIDECAR).read_text())
    assert side == {"format": "cnnrt-article", "version": 1, "name": "shoes", "meta": meta, "labels": labels}
    back = load_model(tmp_path / "a")
    assert (back.name, back.meta, back.labels) == ("shoes", meta, labels)
    for k, v in g.params.items():
        np.testing.assert_array_equal(back.params[k], v)
    (tmp_path / "a" / ARTICLE_SIDECAR).unlink()
    bare = load_model(tmp_path / "a")
    assert (bare.name, bare.meta, bare.labels) == ("a", {}, None)


def test_article_sidecar_never_outlives_its_weights(tmp_path, rng):
    """Rewriting a directory (--force) replaces the sidecar too: no older model's name stays."""
    save_article(deep_mnist(random_deep_mnist_params(rng), name="old", meta={"v": 1}), tmp_path / "a")
    save_article(deep_mnist(random_deep_mnist_params(rng), name="new"), tmp_path / "a", overwrite=True)
    m = load_model(tmp_path / "a")
    assert (m.name, m.meta) == ("new", {})


@pytest.mark.parametrize("content, expected", [
    (b"{not json", r"not valid JSON"),
    (b"\xff\xfe", r"not valid JSON"),
    (b"", r"not valid JSON"),
    (b"[1, 2]", r"expected a JSON object, got list"),
    (b'{"format": "cnnrt", "version": 1}', r"'format' must be \"cnnrt-article\", got \"cnnrt\""),
    (b'{"format": "cnnrt-article"}', r"'version' must be a whole number from 1, got null"),
    (b'{"format": "cnnrt-article", "version": "1"}', r"'version' must be a whole number from 1, got \"1\""),
    (b'{"format": "cnnrt-article", "version": 7}', r"version 7 is newer than this cnnrt reads \(version 1\)"),
    (b'{"format": "cnnrt-article", "version": 1, "name": 5}', r"'name' must be a non-empty string, got 5"),
    (b'{"format": "cnnrt-article", "version": 1, "meta": []}', r"'meta' must be an object, got \[\]"),
    (b'{"format": "cnnrt-article", "version": 1, "labels": [1]}', r"'labels' must be a list of strings"),
    (b'{"format": "cnnrt-article", "version": 1, "labels": ["a", "b"]}', r"2 labels for the net's 10 classes"),
    (b"[" * 5000 + b"]" * 5000, r"nested more than 64 levels deep"),
    (b" " * (2 << 20), r"holds 2097152 bytes, far more than a name and provenance take"),
    (None, r"is a directory \(expected the JSON file"),
])
def test_bad_article_sidecar(tmp_path, random_model, content, expected):
    save_article(random_model, tmp_path / "a")
    f = tmp_path / "a" / ARTICLE_SIDECAR
    f.unlink()
    if content is None:
        f.mkdir()
    else:
        f.write_bytes(content)
    with pytest.raises(FormatError, match=expected) as e:
        load_model(tmp_path / "a")
    assert str(e.value).startswith(f"{f}: ")


def test_a_directory_that_is_no_model(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.png").write_bytes(b"not read")
    with pytest.raises(FormatError) as e:
        load_model(tmp_path / "photos")
    assert str(e.value) == (f"{tmp_path / 'photos'}: a directory that is not a model: not a cnnrt bundle "
                            f"(.safetensors), an ONNX or Keras file (.onnx, .keras, .h5), nor an article-format "
                            f"directory (none of the 8 raw files W_conv1 b_conv1 W_conv2 b_conv2 W_fc1 b_fc1 "
                            f"W_fc2 b_fc2 is in it)")


def test_article_missing_file(tmp_path, random_model):
    save_article(random_model, tmp_path / "a")
    (tmp_path / "a" / "b_fc1").unlink()
    with pytest.raises(FormatError, match=r"b_fc1: missing"):
        load_model(tmp_path / "a")


def test_article_wrong_byte_count(tmp_path, random_model):
    save_article(random_model, tmp_path / "a")
    f = tmp_path / "a" / "W_conv2"
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(FormatError, match=r"W_conv2: holds 204796 bytes, expected 204800 \(64x5x5x32"):
        load_model(tmp_path / "a")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_article_nan_weights(tmp_path, random_model, bad):
    save_article(random_model, tmp_path / "a")
    f = tmp_path / "a" / "W_fc2"
    t = np.fromfile(f, "<f4")
    t[17] = bad
    t.tofile(f)
    with pytest.raises(FormatError, match=r"W_fc2: holds 1 NaN or Inf values \(first at index \(0, 0, 0, 17\)\)"):
        load_model(tmp_path / "a")


def test_missing_model_path(tmp_path):
    with pytest.raises(FormatError, match="no such model file or directory"):
        load_model(tmp_path / "nothing.safetensors")


def _bundle_with(tmp_path, tensors, desc):
    from safetensors.numpy import save_file
    p = tmp_path / "x.safetensors"
    save_file(tensors, str(p), metadata={"cnnrt": json.dumps(desc)} if desc is not None else None)
    return p


def _desc(tmp_path, random_model):
    save_bundle(random_model, tmp_path / "ok.safetensors")
    from safetensors import safe_open
    with safe_open(str(tmp_path / "ok.safetensors"), "np") as f:
        return json.loads(f.metadata()["cnnrt"]), {k: f.get_tensor(k) for k in f.keys()}


def test_bundle_newer_version_refused(tmp_path, random_model):
    desc, tensors = _desc(tmp_path, random_model)
    desc["version"] = 99
    with pytest.raises(FormatError, match="format version 99 is newer than this cnnrt reads"):
        load_model(_bundle_with(tmp_path, tensors, desc))


def test_bundle_wrong_tensor_size(tmp_path, random_model):
    desc, tensors = _desc(tmp_path, random_model)
    tensors["fc1.weight"] = tensors["fc1.weight"][:, :3000].copy()
    with pytest.raises(FormatError, match=r"x.safetensors: .*'fc1'.*\(1, 3136\).*\(1024, 3000\)"):
        load_model(_bundle_with(tmp_path, tensors, desc))


def test_bundle_nan(tmp_path, random_model):
    desc, tensors = _desc(tmp_path, random_model)
    tensors["conv1.bias"][3] = np.nan
    with pytest.raises(FormatError, match=r"tensor 'conv1.bias'.*1 NaN or Inf"):
        load_model(_bundle_with(tmp_path, tensors, desc))


def test_bundle_missing_tensor_and_metadata(tmp_path, random_model):
    desc, tensors = _desc(tmp_path, random_model)
    del tensors["fc2.bias"]
    with pytest.raises(FormatError, match=r"tensor 'fc2.bias' is missing"):
        load_model(_bundle_with(tmp_path, tensors, desc))
    with pytest.raises(FormatError, match="without cnnrt's 'cnnrt' metadata"):
        load_model(_bundle_with(tmp_path, {"a": np.zeros(3, np.float32)}, None))


def test_bundle_truncated_and_garbage(tmp_path, random_model):
    save_bundle(random_model, tmp_path / "ok.safetensors")
    raw = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FormatError, match=r"t.safetensors: not a readable safetensors bundle"):
        load_model(tmp_path / "t.safetensors")
    (tmp_path / "g.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(FormatError, match=r"g.safetensors: not a readable safetensors bundle"):
        load_model(tmp_path / "g.safetensors")


def test_save_article_refuses_other_nets(tmp_path, rng):
    from cnnrt.model import Dense, Model, Softmax
    m = Model((4, 4, 1), [Dense("d", np.ones((3, 16), np.float32), np.zeros(3, np.float32), "none"), Softmax()])
    with pytest.raises(FormatError, match="not the article's Deep MNIST net"):
        save_article(m, tmp_path / "a")


def test_save_article_refuses_same_sizes_other_layers(tmp_path, random_model):
    """Same tensor sizes, other layers (here conv2 without padding): the raw files could not say
    so, and would load back as the article's net."""
    random_model.layers[2].padding = "valid"
    with pytest.raises(FormatError, match="not the article's Deep MNIST net"):
        save_article(random_model, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_model_rejects_nan_in_memory(rng):
    p = random_deep_mnist_params(rng)
    p["fc1.weight"][5, 6] = np.inf
    with pytest.raises(FormatError, match=r"layer 'fc1'.*weight holds 1 NaN or Inf values \(first at index \(5, 6\)\)"):
        deep_mnist(p)
