"""`cnnrt eval --report`: one self-contained HTML page about an evaluation.

The page holds the run (model, backend, precision, batch size, time), the accuracy, the confusion
matrix as a picture, per-class precision and recall, and the most confident mistakes as images
with their top-2 classes. Every figure is a base64 PNG data URI, so the file can be mailed or
archived alone: it loads nothing from anywhere. Pictures are drawn with matplotlib (extra
`cnnrt[report]`), a well-kept library, rather than hand-made SVG; it is imported only here.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import os
import secrets
from pathlib import Path

import numpy as np

from .errors import CnnrtError

MISTAKES_SHOWN = 25
THUMBNAIL_PIXELS = 112  # mistakes are scaled up (nearest neighbour) to at least this many pixels a side
UNDEFINED = "\u2014"    # shown where a ratio has a zero denominator (a class never predicted or never present)


# ------------------------------------------------------------------ the numbers

def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """(classes, classes) int64 counts: row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    k = int(num_classes)
    return np.bincount(labels * k + predictions, minlength=k * k).reshape(k, k)


def precision_recall(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision (correct / predicted as the class) and recall (correct / truly the
    class), float64, NaN where the class was never predicted (precision) or never present (recall)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted, present = cm.sum(axis=0), cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(present > 0, tp / present, np.nan)
    return precision, recall


def most_confident_mistakes(labels, predictions, probabilities, k: int = MISTAKES_SHOWN) -> np.ndarray:
    """Indices of up to k misclassified images, the highest probability given to the wrong
    (predicted) class first; ties keep the dataset's order."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    wrong = np.flatnonzero(predictions != labels)
    confidence = np.asarray(probabilities)[wrong, predictions[wrong]]
    order = np.argsort(-confidence, kind="stable")
    return wrong[order[:k]]


def class_names(meta: dict | None, num_classes: int, labels: list[str] | None = None) -> list[str]:
    """The model's own class names (its `labels`, or its metadata's) if it stores them, else '0', '1', ..."""
    names = labels or (meta or {}).get("labels")
    if isinstance(names, list) and len(names) == num_classes:
        return [str(v) for v in names]
    return [str(i) for i in range(num_classes)]


def format_ratio(value: float) -> str:
    return UNDEFINED if not np.isfinite(value) else f"{value:.4f}"


# ------------------------------------------------------------------ pictures

def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CnnrtError("--report needs matplotlib: pip install 'cnnrt[report]'") from None


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _display_pixels(image: np.ndarray) -> np.ndarray:
    """An input image as uint8 (H, W) or (H, W, 3|4) for display: uint8 as is; floats (already
    scaled by the caller) stretched from their own minimum to maximum."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
        raise CnnrtError(f"report: cannot show an image of shape {image.shape} "
                         "(expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4))")
    if img.dtype != np.uint8:
        f = img.astype(np.float64)
        lo, hi = float(f.min()), float(f.max())
        img = np.zeros(f.shape, np.uint8) if hi <= lo else np.round((f - lo) / (hi - lo) * 255).astype(np.uint8)
    return img


def thumbnail_png(image: np.ndarray) -> bytes:
    """The image scaled up by a whole factor (nearest neighbour, every pixel stays a visible square),
    as PNG bytes."""
    from matplotlib.image import imsave

    img = _display_pixels(image)
    factor = max(1, -(-THUMBNAIL_PIXELS // max(img.shape[:2])))
    big = np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)
    if big.ndim == 2:  # grey as equal R, G, B: exact, where a colormap would round some levels
        big = np.repeat(big[..., None], 3, axis=2)
    buf = io.BytesIO()
    imsave(buf, big, format="png")
    return buf.getvalue()


def confusion_matrix_png(cm: np.ndarray, names: list[str]) -> bytes:
    """The matrix with its counts written in the cells. Colour is on a log scale so that a handful of
    mistakes shows beside a diagonal of thousands; empty cells stay white."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    k = len(names)
    side = min(11.0, max(4.5, 0.42 * k + 0.8))
    fig = Figure(figsize=(side + 0.9, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    shown = np.ma.masked_equal(cm, 0)
    vmax = max(int(cm.max()), 2)
    im = ax.imshow(shown, cmap="Blues", norm=LogNorm(vmin=0.5, vmax=vmax), interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="images (log scale)")
    if k <= 40:
        ax.set_xticks(range(k), names, rotation=90 if max(map(len, names)) > 3 else 0)
        ax.set_yticks(range(k), names)
    if k <= 20:
        threshold = np.log(vmax) * 0.6
        for t in range(k):
            for p in range(k):
                if cm[t, p]:
                    ax.text(p, t, str(int(cm[t, p])), ha="center", va="center", fontsize=9,
                            color="white" if np.log(cm[t, p]) > threshold else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ------------------------------------------------------------------ the page

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #1a1a1a; background: #fff; max-width: 1150px; }
h1 { font-size: 1.5em; margin: 0 0 12px; } h2 { font-size: 1.15em; margin: 24px 0 8px; }
table { border-collapse: collapse; } td, th { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f2f4f7; } td:first-child, th:first-child { text-align: left; }
#run td:first-child { color: #555; }
.big { font-size: 2.2em; font-weight: 600; margin: 4px 0; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.undefined { color: #999; } .note { max-width: 440px; color: #555; font-size: .9em; }
#mistakes .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(132px, 1fr)); gap: 12px; }
figure { margin: 0; padding: 6px; border: 1px solid #ddd; border-radius: 4px; text-align: center; font-size: 0.8em; }
figure img { image-rendering: pixelated; display: block; margin: 0 auto 4px; }
figcaption b { color: #b00020; }
"""


def _validate(images, labels, probabilities, predictions, names) -> tuple:
    images = np.asarray(images)
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n, k = len(labels), len(names)
    if n == 0:
        raise CnnrtError("report: no images to report on")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise CnnrtError(f"report: labels must be one integer per image, got shape {labels.shape} dtype {labels.dtype}")
    if probabilities.shape != (n, k):
        raise CnnrtError(f"report: expected probabilities of shape ({n}, {k}) for {n} images and {k} classes, "
                         f"got {probabilities.shape}")
    if len(images) != n:
        raise CnnrtError(f"report: {len(images)} images but {n} labels")
    if labels.min() < 0 or labels.max() >= k:
        raise CnnrtError(f"report: labels must lie in 0..{k - 1} (the model's classes), "
                         f"found {int(labels.min())}..{int(labels.max())}")
    if predictions is None:
        predictions = probabilities.argmax(axis=1)
    predictions = np.asarray(predictions, dtype=np.int64)
    if predictions.shape != (n,) or predictions.min() < 0 or predictions.max() >= k:
        raise CnnrtError(f"report: expected {n} predicted classes in 0..{k - 1}")
    return images, labels.astype(np.int64), probabilities, predictions


def _run_rows(run: dict) -> list[tuple[str, str]]:
    rows = []
    if "model" in run:
        rows.append(("Model", str(run["model"]) + (f" ({run['model_name']})" if run.get("model_name") else "")))
    for key, title in (("backend", "Backend"), ("precision", "Precision"), ("batch_size", "Batch size"),
                       ("images", "Images")):
        if key in run:
            rows.append((title, str(run[key])))
    if "seconds" in run:
        how = (f"median of {run['runs'] - 1} warm runs; first run {run['first_run_seconds']:.4g} s"
               if run.get("runs", 1) > 1 and "first_run_seconds" in run else "one run")
        rate = f", {run['images_per_second']:,.0f} images/s" if "images_per_second" in run else ""
        rows.append(("Time", f"{run['seconds']:.4g} s{rate} ({how})"))
    if "load_seconds" in run:
        rows.append(("Loading", f"{run['load_seconds']:.3g} s"))
    rows.append(("Written", datetime.datetime.now().astimezone().isoformat(timespec="seconds")))
    return rows


def build_html(images, labels, probabilities, names: list[str], run: dict | None = None,
               predictions=None) -> str:
    """The whole page as a string.

    images: (N, H, W), (N, H, W, 1|3|4), uint8 (as the model reads them) or float.
    labels: (N,) true classes. probabilities: (N, classes). names: one per class.
    run: what ran (model, backend, precision, batch_size, images, seconds, images_per_second, ...).
    predictions: the predicted classes, if not the argmax of `probabilities` (eval passes those it
    scored, so the page's accuracy is the one it printed).
    """
    _require_matplotlib()
    run = dict(run or {})
    images, labels, probabilities, predictions = _validate(images, labels, probabilities, predictions, names)
    esc = html.escape
    n, k = len(labels), len(names)
    cm = confusion_matrix(labels, predictions, k)
    precision, recall = precision_recall(cm)
    correct = int(np.trace(cm))
    accuracy = f"{correct / n:.4f} ({correct}/{n})"

    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>cnnrt eval report: {esc(str(run.get('model_name') or run.get('model') or ''))}</title>",
           f"<style>{_CSS}</style></head><body>", "<h1>cnnrt eval report</h1>",
           '<table id="run">']
    out += [f"<tr><td>{esc(a)}</td><td>{esc(b)}</td></tr>" for a, b in _run_rows(run)]
    out.append("</table>")

    out.append('<h2>Accuracy</h2>')
    out.append(f'<p id="accuracy" class="big" data-correct="{correct}" data-images="{n}">{esc(accuracy)}</p>')
    out.append(f"<p>{n - correct} of {n} images misclassified.</p>")

    out.append('<div class="row"><section><h2>Confusion matrix</h2>')
    out.append(f'<img id="confusion-matrix" alt="confusion matrix: rows true class, columns predicted class" '
               f'src="{_png_data_uri(confusion_matrix_png(cm, names))}"></section>')
    out.append('<section><h2>Per-class precision and recall</h2><table id="per-class">')
    out.append("<thead><tr><th>class</th><th>images</th><th>predicted</th><th>correct</th>"
               "<th>precision</th><th>recall</th></tr></thead><tbody>")
    for c in range(k):
        cells = []
        for v in (precision[c], recall[c]):
            s = format_ratio(v)
            cells.append(f'<td class="undefined" title="undefined: zero denominator">{s}</td>'
                         if s == UNDEFINED else f"<td>{s}</td>")
        out.append(f"<tr><td>{esc(names[c])}</td><td>{int(cm[c].sum())}</td><td>{int(cm[:, c].sum())}</td>"
                   f"<td>{int(cm[c, c])}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    out.append(f'<p class="note">Precision: correct / predicted as the class; recall: correct / truly the class; '
               f'"{UNDEFINED}" where that count is zero.</p></section></div>')

    shown = most_confident_mistakes(labels, predictions, probabilities)
    out.append('<section id="mistakes">')
    if len(shown) == 0:
        out.append("<h2>Mistakes</h2><p>No mistakes: every image was classified correctly.</p>")
    else:
        wrong = n - correct
        title = (f"The {len(shown)} most confident mistakes" if wrong > len(shown)
                 else f"All {wrong} mistake{'s' if wrong > 1 else ''}, most confident first")
        out.append(f"<h2>{title}</h2><div class=\"grid\">")
        for i in shown:
            p = int(predictions[i])
            rest = probabilities[i].copy()
            rest[p] = -np.inf
            second = int(rest.argmax()) if k > 1 else None
            caption = (f"#{int(i)} · true {esc(names[labels[i]])}<br>"
                       f"<b>1st: {esc(names[p])} ({probabilities[i, p]:.3f})</b>")
            if second is not None:
                caption += f"<br>2nd: {esc(names[second])} ({probabilities[i, second]:.3f})"
            out.append(f'<figure class="mistake" data-index="{int(i)}" data-true="{int(labels[i])}" '
                       f'data-predicted="{p}"><img alt="image {int(i)}" '
                       f'src="{_png_data_uri(thumbnail_png(images[i]))}"><figcaption>{caption}</figcaption></figure>')
        out.append("</div>")
    out.append("</section>")
    out.append('<p style="color:#777;font-size:.8em">Written by cnnrt eval --report. '
               "Self-contained: every figure is embedded in this file.</p></body></html>")
    return "\n".join(out) + "\n"


def check_destination(path: str | os.PathLike) -> None:
    """Fail before any long work: matplotlib is there and `path` can be written."""
    _require_matplotlib()
    p = Path(path)
    if p.is_dir():
        raise CnnrtError(f"{p}: is a directory; --report takes the HTML file to write")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CnnrtError(f"{p}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CnnrtError(f"{p}: cannot write into the folder {parent} (permission denied)")


def write_report(path: str | os.PathLike, images, labels, probabilities, names: list[str],
                 run: dict | None = None, predictions=None) -> Path:
    """Build the page and write it atomically: a temporary file beside `path`, then os.replace,
    so a failure leaves neither a half-written page nor a changed old one. Mode follows the umask."""
    check_destination(path)
    text = build_html(images, labels, probabilities, names, run, predictions).encode("utf-8")
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(text)
        os.replace(tmp, p)
    except OSError as e:
        raise CnnrtError(f"{p}: cannot write the report ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return p
