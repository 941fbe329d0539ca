"""`cnnrt predict`, end to end in fresh processes: drawn digits, an RGB model, every bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from conftest import ROOT  # noqa: E402


def cnnrt(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "cnnrt", "predict", *map(str, args)],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert "Traceback" not in p.stderr, p.stderr
    if check:
        assert p.returncode == 0, p.stderr
    return p


def json_lines(p) -> list[dict]:
    return [json.loads(line) for line in p.stdout.splitlines()]


def draw_like_a_user(digit: np.ndarray, rng) -> Image.Image:
    """An MNIST digit as someone would draw it: black on a white 280x280 page, anywhere on it, at
    any size, with a thicker or thinner pen."""
    size = int(rng.integers(110, 260))
    ink = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC))
    for _ in range(int(rng.integers(0, 3))):  # a thicker pen: grow the strokes by a pixel or two
        ink = np.maximum.reduce([ink, np.roll(ink, 1, 0), np.roll(ink, -1, 0)])
        ink = np.maximum.reduce([ink, np.roll(ink, 1, 1), np.roll(ink, -1, 1)])
    page = np.full((280, 280), 255, np.uint8)
    oy, ox = rng.integers(0, 280 - size + 1, 2)
    page[oy:oy + size, ox:ox + size] = 255 - ink
    return Image.fromarray(page, "L")


def test_drawn_digits_are_read_like_mnist(tmp_path, mnist_test, rng):
    # The shipped model gets ~99.2% of such drawings right (99.35% on MNIST's own images). With 1,000
    # fresh digits a run has ~8 mistakes, and 21 or more (below the 98% bar) has odds of about 1 in 5,000.
    x, y = mnist_test
    n = 1000
    pick = rng.choice(len(x), n, replace=False)
    for k, i in enumerate(pick):
        draw_like_a_user(x[i], rng).save(tmp_path / f"{k:04d}.png", compress_level=1)
    out = json_lines(cnnrt(tmp_path, "--json", "--backend", "numpy"))
    assert [r["file"] for r in out] == [str(tmp_path / f"{k:04d}.png") for k in range(n)]
    assert all(r["backend"] == "numpy" and r["precision"] == "fp32" and r["preprocess"] == "mnist" for r in out)
    predicted = np.array([int(r["label"]) for r in out])
    accuracy = (predicted == y[pick]).mean()
    assert accuracy >= 0.98, f"{accuracy:.3f}: {[(r['file'], int(t)) for r, t in zip(out, y[pick]) if int(r['label']) != t]}"
    for r in out:
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and r["top"][0]["label"] == r["label"]


def test_text_output_and_npy_stack(tmp_path, mnist_test):
    x, y = mnist_test
    np.save(tmp_path / "stack.npy", x[:4])
    draw_like_a_user(x[4], np.random.default_rng(0)).save(tmp_path / "drawn.png")
    p = cnnrt(tmp_path / "stack.npy", tmp_path / "drawn.png", "--backend", "numpy", "--top-k", "2")
    lines = p.stdout.splitlines()
    assert "backend numpy, fp32" in lines[0] and "preprocessing: mnist" in lines[0] and "5 image(s)" in lines[0]
    for line, src, label in zip(lines[1:], [f"{tmp_path / 'stack.npy'}[{i}]" for i in range(4)] + [str(tmp_path / "drawn.png")], y[:5]):
        assert line.startswith(f"{src}: {label}  ({label}: ")
        assert line.rsplit("(", 1)[1].count(": ") == 2  # two classes with their probabilities
    # MNIST's own images, fed as they are: same answers as eval's path
    r = json_lines(cnnrt(tmp_path / "stack.npy", "--json", "--backend", "numpy", "--preprocess", "resize"))
    assert [int(v["label"]) for v in r] == list(y[:4]) and r[0]["preprocess"] == "resize"


# ---------------------------------------------------------------- an RGB model

def tiny_rgb_model(rng):
    from cnnrt.model import Conv2D, Dense, MaxPool2D, Model, Softmax

    w = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    return Model(input_shape=(32, 32, 3), input_scale=1 / 255, name="tiny_rgb",
                 meta={"labels": ["cat", "dog", "bird", "fish", "frog"]},
                 layers=[Conv2D("conv1", w(4, 3, 3, 3), w(4), activation="relu"), MaxPool2D("pool1"),
                         Dense("fc1", w(5, 16 * 16 * 4), w(5), activation="none"), Softmax("softmax")])


def reference(model, x: np.ndarray) -> np.ndarray:
    """Float64 NumPy forward of tiny_rgb_model, written out here: x (N, 32, 32, 3) already scaled."""
    conv, _, fc, _ = model.layers
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))  # N, 32, 32, C, 3, 3
    a = np.maximum(np.einsum("nyxcij,oijc->nyxo", win, conv.weight.astype(np.float64)) + conv.bias, 0)
    a = a.reshape(len(x), 16, 2, 16, 2, 4).max(axis=(2, 4))
    z = a.reshape(len(x), -1) @ fc.weight.astype(np.float64).T + fc.bias
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_rgb_model_gets_resized_and_channel_converted_images(tmp_path, rng):
    from cnnrt.formats import save_bundle

    model = tiny_rgb_model(rng)
    save_bundle(model, tmp_path / "rgb.safetensors")
    exact = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)  # already the model's size
    Image.fromarray(exact, "RGB").save(tmp_path / "a_exact.png")
    gray = rng.integers(0, 256, (32, 32)).astype(np.uint8)  # gray into an RGB model: channels repeated
    Image.fromarray(gray, "L").save(tmp_path / "b_gray.png")
    colour = np.array([200, 30, 120], np.uint8)  # any size, one colour: resized, it stays that colour
    Image.fromarray(np.broadcast_to(colour, (50, 71, 3)).copy(), "RGB").save(tmp_path / "c_flat.png")
    out = json_lines(cnnrt(tmp_path / "a_exact.png", tmp_path / "b_gray.png", tmp_path / "c_flat.png",
                           "--model", tmp_path / "rgb.safetensors", "--json", "--backend", "numpy", "--top-k", "5"))
    want = reference(model, np.stack([exact, np.repeat(gray[..., None], 3, -1),
                                      np.broadcast_to(colour, (32, 32, 3))]) / 255.0)
    assert [r["preprocess"] for r in out] == ["resize"] * 3
    for r, p in zip(out, want):
        got = {t["class"]: t["probability"] for t in r["top"]}
        assert sorted(got) == list(range(5))
        np.testing.assert_allclose([got[c] for c in range(5)], p, rtol=1e-4, atol=1e-6)
        assert r["label"] == ["cat", "dog", "bird", "fish", "frog"][int(p.argmax())]
    p = cnnrt(tmp_path / "a_exact.png", "--model", tmp_path / "rgb.safetensors", "--preprocess", "mnist", check=False)
    assert p.returncode == 2 and "--preprocess mnist needs a 28x28 single-channel model" in p.stderr


# ---------------------------------------------------------------- bad input

def test_every_bad_input_is_named_and_the_rest_still_classified(tmp_path, mnist_test):
    x, y = mnist_test
    draw_like_a_user(x[0], np.random.default_rng(1)).save(tmp_path / "good.png")
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:100])
    Image.new("L", (100, 100), 255).save(tmp_path / "blank.png")
    np.save(tmp_path / "pickle.npy", np.array([{}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "float.npy", np.full((28, 28), 7.5, np.float32))
    (tmp_path / "empty").mkdir()
    bad = {
        tmp_path / "missing.png": "no such file or folder",
        tmp_path / "notes.png": "not an image file",
        tmp_path / "cut.png": "damaged or truncated image",
        tmp_path / "blank.png": "no digit found",
        tmp_path / "pickle.npy": "not a readable .npy array",
        tmp_path / "float.npy": "float pixels must lie in [0, 1]",
        tmp_path / "empty": "a folder with no image files",
    }
    if os.geteuid() != 0:  # root reads everything
        Image.new("L", (9, 9), 0).save(tmp_path / "locked.png")
        os.chmod(tmp_path / "locked.png", 0)
        bad[tmp_path / "locked.png"] = "cannot read"
    args = [tmp_path / "good.png", *bad]
    p = cnnrt(*args, "--backend", "numpy", check=False)
    assert p.returncode == 2
    for path, message in bad.items():
        assert f"cnnrt: error: {path}: {message}" in p.stderr
    assert f"{len(bad)} of {len(bad) + 1} input(s) could not be classified" in p.stderr
    assert f"{tmp_path / 'good.png'}: {y[0]}" in p.stdout
    out = json_lines(cnnrt(*args, "--json", "--backend", "numpy", check=False))
    assert [r["file"] for r in out] == [str(a) for a in args]  # one line per input, in order
    assert out[0]["label"] == str(y[0]) and "error" not in out[0]
    for r, message in zip(out[1:], bad.values()):
        assert message in r["error"] and "label" not in r


def test_bad_options_and_model(tmp_path, mnist_test):
    np.save(tmp_path / "one.npy", mnist_test[0][0])
    p = cnnrt(tmp_path / "one.npy", "--top-k", "0", check=False)
    assert p.returncode == 2 and "--top-k must be at least 1, got 0" in p.stderr
    p = cnnrt(tmp_path / "one.npy", "--model", tmp_path / "nope.safetensors", check=False)
    assert p.returncode == 2 and f"{tmp_path / 'nope.safetensors'}: no such model file" in p.stderr
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    p = cnnrt(tmp_path / "one.npy", "--model", tmp_path / "junk.safetensors", check=False)
    assert p.returncode == 2 and "junk.safetensors: not a readable safetensors bundle" in p.stderr
    r = json_lines(cnnrt(tmp_path / "one.npy", "--top-k", "50", "--json", "--backend", "numpy"))
    assert len(r[0]["top"]) == 10  # capped at the number of classes
