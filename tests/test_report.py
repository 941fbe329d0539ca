"""`cnnrt eval --report`: the numbers against brute-force counting, the page's edge cases, the
command end to end, and the page in a real browser (Debian's chromium, headless)."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cnnrt.errors import CnnrtError

from conftest import MNIST, ROOT, SHIPPED

pytest.importorskip("matplotlib", reason="the report needs matplotlib (pip install 'cnnrt[report]')")

from cnnrt import report  # noqa: E402


# ------------------------------------------------------------------ helpers

class Page(HTMLParser):
    """Every element's tag and attributes, the text under each id, and the table rows."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.text = text
        self.elements: list[tuple[str, dict]] = []
        self.text_by_id: dict[str, str] = {}
        self._open_ids: list[tuple[str, str, int]] = []  # (id, tag, depth)
        self._depth = 0
        self.rows: dict[str, list[list[str]]] = {}  # table id -> rows of cell texts
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.elements.append((tag, a))
        if tag in ("img", "meta", "br", "link", "input"):
            return
        self._depth += 1
        if "id" in a:
            self._open_ids.append((a["id"], tag, self._depth))
            self.text_by_id[a["id"]] = ""
        if tag == "table":
            self._table = a.get("id", "?")
            self.rows.setdefault(self._table, [])
        elif tag == "tr" and self._table:
            self.rows[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.rows[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        if self._open_ids and self._open_ids[-1][1] == tag and self._open_ids[-1][2] == self._depth:
            self._open_ids.pop()
        self._depth -= 1

    def handle_data(self, data):
        for ident, _, _ in self._open_ids:
            self.text_by_id[ident] += data
        if self._cell is not None:
            self._cell.append(data)

    def imgs(self, **where) -> list[dict]:
        return [a for t, a in self.elements if t == "img" and all(a.get(k) == v for k, v in where.items())]

    def figures(self) -> list[dict]:
        return [a for t, a in self.elements if t == "figure" and "mistake" in a.get("class", "").split()]


def decode_png(uri: str) -> np.ndarray:
    """A data URI's PNG as uint8 (H, W, channels), decoded by matplotlib (Pillow), not by cnnrt."""
    from matplotlib.image import imread

    assert uri.startswith("data:image/png;base64,"), uri[:40]
    return np.round(imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) * 255).astype(np.uint8)


def brute_force_counts(labels, predictions, k):
    """Confusion matrix, precision and recall by explicit loops over every (true, predicted) pair."""
    cm = [[0] * k for _ in range(k)]
    for t, p in zip(labels.tolist(), predictions.tolist()):
        cm[t][p] += 1
    precision, recall = [], []
    for c in range(k):
        predicted = sum(cm[t][c] for t in range(k))
        present = sum(cm[c][p] for p in range(k))
        precision.append(None if predicted == 0 else cm[c][c] / predicted)
        recall.append(None if present == 0 else cm[c][c] / present)
    return np.array(cm), precision, recall


def probabilities_for(rng, predictions, k, confidence=None):
    """Random probability rows whose argmax is `predictions` (each row sums to 1)."""
    n = len(predictions)
    p = rng.random((n, k)) * 0.5
    top = confidence if confidence is not None else 0.5 + rng.random(n)
    p[np.arange(n), predictions] = top
    return p / p.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ the numbers

def test_counts_on_a_hand_checked_example():
    # 4 classes; class 2 is present but never predicted, class 3 neither present nor predicted
    labels, predictions = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])
    cm = report.confusion_matrix(labels, predictions, 4)
    np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    precision, recall = report.precision_recall(cm)
    np.testing.assert_allclose(precision[:2], [1.0, 1 / 3])
    assert np.isnan(precision[2]) and np.isnan(precision[3])
    np.testing.assert_allclose(recall[:3], [0.5, 1.0, 0.0])
    assert np.isnan(recall[3])
    assert [report.format_ratio(v) for v in precision] == ["1.0000", "0.3333", "\u2014", "\u2014"]


@pytest.mark.parametrize("trial", range(5))
def test_counts_against_brute_force(rng, trial):
    k = int(rng.integers(2, 13))
    n = int(rng.integers(1, 400))
    labels = rng.integers(0, k, n)
    # predictions drawn from a subset of classes, so that some classes are never predicted
    allowed = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)
    predictions = np.where(rng.random(n) < 0.6, labels, rng.choice(allowed, n))
    cm, bf_precision, bf_recall = brute_force_counts(labels, predictions, k)
    got = report.confusion_matrix(labels, predictions, k)
    np.testing.assert_array_equal(got, cm)
    precision, recall = report.precision_recall(got)
    for c in range(k):
        for mine, theirs in ((precision[c], bf_precision[c]), (recall[c], bf_recall[c])):
            if theirs is None:
                assert np.isnan(mine)
            else:
                assert mine == pytest.approx(theirs, rel=1e-12)


def test_most_confident_mistakes_against_a_sort(rng):
    k, n = 7, 600
    labels = rng.integers(0, k, n)
    predictions = np.where(rng.random(n) < 0.8, labels, rng.integers(0, k, n))
    probs = probabilities_for(rng, predictions, k)
    wrong = [i for i in range(n) if predictions[i] != labels[i]]
    expected = sorted(wrong, key=lambda i: (-probs[i, predictions[i]], i))[:25]
    assert len(wrong) > 25
    assert report.most_confident_mistakes(labels, predictions, probs).tolist() == expected
    assert report.most_confident_mistakes(labels, labels, probs).tolist() == []


# ------------------------------------------------------------------ the page's edge cases

def _page(images, labels, probs, names, predictions=None):
    return Page(report.build_html(images, labels, probs, names, {"model": "m.safetensors", "backend": "numpy",
                                                                "precision": "fp32", "batch_size": 64,
                                                                "images": len(labels), "seconds": 0.5,
                                                                "images_per_second": len(labels) / 0.5},
                                  predictions=predictions))


def test_no_mistakes(rng):
    labels = rng.integers(0, 10, 50)
    page = _page(rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), labels, probabilities_for(rng, labels, 10),
                 [str(i) for i in range(10)])
    assert page.text_by_id["accuracy"] == "1.0000 (50/50)"
    assert page.figures() == []
    assert "No mistakes" in page.text_by_id["mistakes"]
    assert len(page.imgs(id="confusion-matrix")) == 1


@pytest.mark.parametrize("wrong", [1, 7, 40])
def test_mistakes_shown_most_confident_first_with_top_two(rng, wrong):
    n, k = 120, 10
    labels = rng.integers(0, k, n)
    predictions = labels.copy()
    bad = rng.choice(n, wrong, replace=False)
    predictions[bad] = (labels[bad] + rng.integers(1, k, wrong)) % k
    probs = probabilities_for(rng, predictions, k)
    page = _page(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), labels, probs, [f"c{i}" for i in range(k)])
    figures = page.figures()
    assert len(figures) == min(wrong, 25)
    expected = sorted(bad.tolist(), key=lambda i: (-probs[i, predictions[i]], i))[:25]
    assert [int(f["data-index"]) for f in figures] == expected
    assert page.text_by_id["accuracy"] == f"{(n - wrong) / n:.4f} ({n - wrong}/{n})"
    for i in expected:  # each caption: the true class, then the top-2 classes with their probabilities
        second = int(np.argsort(-probs[i])[1])
        assert (f"#{i} · true c{labels[i]}<br><b>1st: c{predictions[i]} ({probs[i, predictions[i]]:.3f})</b>"
                f"<br>2nd: c{second} ({probs[i, second]:.3f})") in page.text


def test_undefined_precision_is_a_dash_not_nan(rng):
    n, k = 60, 5
    labels = np.arange(n) % 4             # class 4 never present: recall undefined
    predictions = np.where(labels == 3, 0, labels)  # class 3 never predicted: precision undefined
    page = _page(np.zeros((n, 8, 8), np.uint8), labels, probabilities_for(rng, predictions, k),
                 [str(i) for i in range(k)])
    rows = page.rows["per-class"]
    assert rows[0] == ["class", "images", "predicted", "correct", "precision", "recall"]
    by_class = {r[0]: r for r in rows[1:]}
    assert by_class["3"][4] == "\u2014" and by_class["3"][5] == "0.0000"
    assert by_class["4"][4] == "\u2014" and by_class["4"][5] == "\u2014"
    assert by_class["0"][4] == f"{15 / 30:.4f}" and by_class["0"][5] == "1.0000"
    assert not any("nan" in cell.lower() for r in rows for cell in r)


@pytest.mark.parametrize("shape", [(9, 10, 12, 3), (9, 10, 12), (9, 10, 12, 1)])
def test_mistake_images_are_the_inputs_scaled_up(rng, shape):
    n, k = shape[0], 3
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = np.zeros(n, np.int64)
    predictions = np.ones(n, np.int64)  # every image a mistake
    page = _page(images, labels, probabilities_for(rng, predictions, k), ["a", "b", "c"])
    figures = page.figures()
    assert len(figures) == n
    mistake_imgs = [a for t, a in page.elements if t == "img" and a.get("alt", "").startswith("image ")]
    assert len(mistake_imgs) == n
    for fig, img in zip(figures, mistake_imgs):
        src = images[int(fig["data-index"])]
        factor = -(-112 // 12)  # at least 112 pixels on the longer side, a whole factor
        want = np.repeat(np.repeat(src, factor, axis=0), factor, axis=1)
        got = decode_png(img["src"])
        assert got.shape[:2] == (10 * factor, 12 * factor)
        if want.ndim == 3 and want.shape[-1] == 3:
            np.testing.assert_array_equal(got[..., :3], want)
        else:
            want = want.reshape(want.shape[:2])
            for c in range(3):  # grey drawn as equal R, G, B
                np.testing.assert_array_equal(got[..., c], want)


def test_class_names_are_escaped(rng):
    names = ["<cat>", "a&b", 'say "hi"']
    labels = np.array([0, 1, 2, 0])
    page = _page(np.zeros((4, 5, 5), np.uint8), labels, probabilities_for(rng, np.array([1, 1, 2, 0]), 3), names)
    assert [r[0] for r in page.rows["per-class"][1:]] == names
    assert not any(t == "cat" for t, _ in page.elements)


def test_bad_inputs_are_clear_errors(rng):
    x = np.zeros((3, 4, 4), np.uint8)
    probs = probabilities_for(rng, np.array([0, 1, 0]), 2)
    with pytest.raises(CnnrtError, match=r"labels must lie in 0\.\.1"):
        report.build_html(x, np.array([0, 2, 1]), probs, ["a", "b"])
    with pytest.raises(CnnrtError, match=r"probabilities of shape \(3, 3\)"):
        report.build_html(x, np.array([0, 1, 1]), probs, ["a", "b", "c"])
    with pytest.raises(CnnrtError, match="cannot show an image of shape"):
        report.build_html(np.zeros((3, 4, 4, 2), np.uint8), np.array([1, 0, 1]), probs, ["a", "b"])


def test_write_is_atomic_and_follows_the_umask(rng, tmp_path):
    x = np.zeros((3, 4, 4), np.uint8)
    labels = np.array([0, 1, 0])
    probs = probabilities_for(rng, np.array([0, 1, 1]), 2)
    target = tmp_path / "r.html"
    target.write_text("old page")
    with pytest.raises(CnnrtError):
        report.write_report(target, x, np.array([0, 1, 5]), probs, ["a", "b"])  # fails while building
    assert target.read_text() == "old page" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]

    def broken_replace(src, dst):
        raise PermissionError(13, "Permission denied")
    real_replace = os.replace
    os.replace = broken_replace
    try:
        with pytest.raises(CnnrtError, match=r"r\.html: cannot write the report \(Permission denied\)"):
            report.write_report(target, x, labels, probs, ["a", "b"])
    finally:
        os.replace = real_replace
    assert target.read_text() == "old page" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]

    old = os.umask(0o027)
    try:
        report.write_report(tmp_path / "new.html", x, labels, probs, ["a", "b"])
    finally:
        os.umask(old)
    assert (tmp_path / "new.html").stat().st_mode & 0o777 == 0o640
    assert "2/3" in (tmp_path / "new.html").read_text()
    with pytest.raises(CnnrtError, match="does not exist"):
        report.write_report(tmp_path / "no" / "r.html", x, labels, probs, ["a", "b"])
    with pytest.raises(CnnrtError, match="is a directory"):
        report.write_report(tmp_path, x, labels, probs, ["a", "b"])


# ------------------------------------------------------------------ the command, end to end

def cnnrt(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "cnnrt", *args], capture_output=True, text=True, env=env, cwd=ROOT)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module")
def eval_report(tmp_path_factory):
    """`cnnrt eval --limit 500 --backend numpy --report DIR/report.html`: its stdout and the page."""
    path = tmp_path_factory.mktemp("report") / "report.html"
    out = cnnrt("eval", "--limit", "500", "--backend", "numpy", "--report", str(path)).stdout
    return out, path


def test_eval_report_end_to_end(eval_report):
    out, path = eval_report
    assert f"Report: {path}" in out.splitlines()
    text = path.read_text(encoding="utf-8")
    page = Page(text)

    # self-contained: every src/href is a data URI or an in-page anchor; nothing to fetch
    refs = [(t, k, v) for t, a in page.elements for k, v in a.items() if k in ("src", "href", "srcset", "data")]
    assert refs and all(v.startswith("data:") or v.startswith("#") for _, _, v in refs), refs[:5]
    assert not any(t in ("link", "script", "iframe", "object") for t, _ in page.elements)
    assert not re.search(r"url\(|@import|https?://", text.split("<body>")[0])

    printed = re.search(r"^Accuracy: (\S+ \(\d+/500\))$", out, re.M).group(1)
    assert page.text_by_id["accuracy"] == printed
    correct = int(re.search(r"\((\d+)/500\)", printed).group(1))

    cm_img = page.imgs(id="confusion-matrix")
    assert len(cm_img) == 1
    pixels = decode_png(cm_img[0]["src"])
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300 and len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 10

    # the table against brute-force counts of an in-process run of the same model on the same images
    from cnnrt import load
    from cnnrt.idx import load_mnist

    x, y = load_mnist(MNIST / "t10k-images-idx3-ubyte.gz", MNIST / "t10k-labels-idx1-ubyte.gz")
    x, y = x[:500], y[:500]
    pred = load(SHIPPED / "deep_mnist.safetensors", backend="numpy").predict(x)
    assert int((pred == y).sum()) == correct
    cm, precision, recall = brute_force_counts(y.astype(np.int64), pred, 10)
    rows = page.rows["per-class"][1:]
    assert len(rows) == 10
    for c, r in enumerate(rows):
        assert r[:4] == [str(c), str(cm[c].sum()), str(cm[:, c].sum()), str(cm[c, c])]
        assert r[4:] == [f"{v:.4f}" if v is not None else "\u2014" for v in (precision[c], recall[c])]

    figures = page.figures()
    assert len(figures) == min(25, 500 - correct) > 0
    for f in figures:
        i = int(f["data-index"])
        assert int(f["data-true"]) == y[i] and int(f["data-predicted"]) == pred[i] != y[i]
    assert len(page.imgs()) == 1 + len(figures)
    run = {r[0]: r[1] for r in page.rows["run"]}
    assert run["Backend"] == "numpy" and run["Precision"] == "fp32" and run["Images"] == "500"


def test_eval_report_json_and_errors(tmp_path):
    path = tmp_path / "r.html"
    r = json.loads(cnnrt("eval", "--limit", "30", "--backend", "numpy", "--json", "--report", str(path)).stdout)
    assert r["report"] == str(path) and path.exists()
    assert Page(path.read_text()).text_by_id["accuracy"] == f"{r['accuracy']:.4f} ({r['correct']}/30)"

    bad = tmp_path / "missing" / "r.html"
    p = cnnrt("eval", "--limit", "10", "--backend", "numpy", "--report", str(bad), check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"{bad}: the folder {bad.parent} does not exist" in p.stderr
    assert "Accuracy" not in p.stdout  # refused before the run


# ------------------------------------------------------------------ in a real browser

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)

# Written into a copy of the page: after the load event, what the browser decoded and laid out.
PROBE = """
<img id="probe-broken" src="data:image/png;base64,AAAA" alt="control: a broken image must read as 0 x 0">
<script>
window.addEventListener('load', () => {
  const rect = e => { const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; };
  const out = {
    images: [...document.images].map(i => ({id: i.id, alt: i.alt, complete: i.complete,
      w: i.naturalWidth, h: i.naturalHeight, rect: rect(i)})),
    accuracy: document.getElementById('accuracy').innerText,
    rows: document.querySelectorAll('#per-class tbody tr').length,
    table: rect(document.getElementById('per-class')),
    dpr: window.devicePixelRatio,
  };
  const pre = document.createElement('pre');
  pre.id = 'probe-result';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def chromium(*args, tmp: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--force-device-scale-factor=1", f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; CI has it)")
def test_report_renders_in_chromium(eval_report, tmp_path):
    from matplotlib.image import imread

    out, path = eval_report
    text = path.read_text(encoding="utf-8")
    correct = int(re.search(r"^Accuracy: \S+ \((\d+)/500\)$", out, re.M).group(1))
    mistakes = min(25, 500 - correct)

    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium("--dump-dom", "--window-size=1200,2000", probed.as_uri(), tmp=tmp_path)  # the layout the screenshot gets
    m = re.search(r'<pre id="probe-result">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"chromium gave no probe result (exit {dom.returncode}): {dom.stderr[-2000:]}"
    result = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))

    images = {i["id"] or i["alt"]: i for i in result["images"]}
    assert images["probe-broken"]["w"] == 0  # the probe can see a broken image
    page_images = [i for i in result["images"] if i["id"] != "probe-broken"]
    assert len(page_images) == 1 + mistakes
    for i in page_images:
        assert i["complete"] and i["w"] > 0 and i["h"] > 0 and i["rect"][2] > 0 and i["rect"][3] > 0, i
    cm = images["confusion-matrix"]
    assert cm["w"] > 300 and cm["h"] > 300
    assert result["accuracy"] == re.search(r"^Accuracy: (.*)$", out, re.M).group(1)
    assert result["rows"] == 10 and result["table"][2] > 100 and result["table"][3] > 100

    shot = tmp_path / "shot.png"
    run = chromium(f"--screenshot={shot}", "--window-size=1200,2000", path.as_uri(), tmp=tmp_path)
    assert shot.exists(), f"no screenshot (exit {run.returncode}): {run.stderr[-2000:]}"
    assert shot.stat().st_size > 50_000
    pixels = np.round(imread(shot)[..., :3] * 255).astype(np.uint8)
    assert pixels.shape == (2000, 1200, 3)
    packed = (pixels[..., 0].astype(np.int32) << 16) | (pixels[..., 1].astype(np.int32) << 8) | pixels[..., 2]
    assert len(np.unique(packed)) > 50  # not blank, not a single colour
    white = (pixels == 255).all(axis=-1).mean()
    assert 0.3 < white < 0.98, white
    # the confusion matrix as the browser painted it is the embedded picture, pixel for pixel (nearly)
    # The layout box can sit at a fractional position (line heights depend on the fonts installed), and
    # the browser snaps the image to whole pixels its own way: look within 2 px of the box for it.
    x, y, w, h = (int(round(v)) for v in cm["rect"])
    if result["dpr"] == 1 and y + h + 2 <= 2000 and x >= 2 and y >= 2 and (w, h) == (cm["w"], cm["h"]):
        embedded = decode_png(Page(text).imgs(id="confusion-matrix")[0]["src"])[..., :3].astype(int)
        diffs = {(dx, dy): np.abs(pixels[y + dy:y + dy + h, x + dx:x + dx + w].astype(int) - embedded).mean()
                 for dx in range(-2, 3) for dy in range(-2, 3)}
        best = min(diffs, key=diffs.get)
        assert diffs[best] < 4, f"the confusion matrix is not where the layout put it: box {cm['rect']}, best offset {best} differs by {diffs[best]:.1f}"
    else:
        pytest.fail(f"the confusion matrix was not drawn at its natural size in the first screen: {cm}, dpr {result['dpr']}")


def test_missing_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(CnnrtError, match=r"--report needs matplotlib: pip install 'cnnrt\[report\]'"):
        report.check_destination(tmp_path / "r.html")
