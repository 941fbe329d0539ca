"""The `cnnrt` command. Heavy modules are imported inside each command, so `--help` is instant."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import CnnrtError

HERE = Path(__file__).resolve().parent


def _default(rel: str) -> str:
    """The shipped model and MNIST files live in the repository checkout (installed with -e), not
    in the wheel: a plain install passes --model / --images / --labels."""
    return str(HERE.parent / rel)


DEFAULT_MODEL = "models/deep_mnist/deep_mnist.safetensors"
DEFAULT_IMAGES = "data/mnist/t10k-images-idx3-ubyte.gz"
DEFAULT_LABELS = "data/mnist/t10k-labels-idx1-ubyte.gz"


def cmd_train(a) -> int:
    from .train import train

    train(a.images, a.labels, a.test_images, a.test_labels, a.out, epochs=a.epochs,
          batch_size=a.batch_size, lr=a.lr, seed=a.seed)
    return 0


class _Progress:
    """A one-line progress counter on stderr, only when a person is watching."""

    def __init__(self, total: int, label: str):
        self.total, self.label = total, label
        self.on = sys.stderr.isatty() and total > 2000

    def __call__(self, done: int) -> None:
        if self.on:
            end = "\n" if done >= self.total else ""
            print(f"\r{self.label}: {done}/{self.total} images", end=end, file=sys.stderr, flush=True)


def cmd_eval(a) -> int:
    import time

    import numpy as np

    from . import backends
    from .formats import load_model
    from .idx import load_mnist

    t0 = time.perf_counter()
    model = load_model(a.model)
    x, y = load_mnist(a.images, a.labels)
    if a.limit is not None:
        if a.limit < 1:
            raise CnnrtError(f"--limit must be at least 1, got {a.limit}")
        x, y = x[:a.limit], y[:a.limit]
    name, note = backends.resolve(a.backend)
    if note and not a.json:
        print(note, file=sys.stderr)
    if a.repeat < 1:
        raise CnnrtError(f"--repeat must be at least 1, got {a.repeat}")
    if a.report:
        from .report import check_destination
        check_destination(a.report)  # before the long work: matplotlib is there, the folder is writable
    runner = backends.prepare(model, name, a.precision)
    t1 = time.perf_counter()
    pred = runner.predict(x, batch_size=a.batch_size, progress=None if a.json else _Progress(len(x), "eval"))
    first = time.perf_counter() - t1
    times = [first]
    for _ in range(a.repeat - 1):  # warm runs: the first one pays for compiling, graph capture, caches
        t = time.perf_counter()
        again = runner.predict(x, batch_size=a.batch_size)
        times.append(time.perf_counter() - t)
        if not np.array_equal(again, pred):
            raise CnnrtError(f"backend {runner.backend} gave different predictions on a repeated run")
    seconds = float(np.median(times[1:])) if a.repeat > 1 else first
    correct = int((pred == y).sum())
    result = {
        "images": int(len(x)),
        "correct": correct,
        "accuracy": correct / len(x),
        "seconds": seconds,
        "images_per_second": len(x) / seconds,
        "first_run_seconds": first,
        "runs": a.repeat,
        "load_seconds": t1 - t0,
        "backend": runner.backend,
        "precision": runner.precision,
        "batch_size": a.batch_size or runner.default_batch_size,
        "model": str(a.model),
    }
    if a.report:  # one more, untimed run for the probabilities; the page scores the predictions timed above
        from .report import class_names, write_report
        probs = runner.probabilities(x, batch_size=a.batch_size)
        write_report(a.report, x, y, probs, class_names(model.meta, model.num_classes),
                     {**result, "model_name": model.name}, predictions=pred)
        result["report"] = str(a.report)
    if a.json:
        print(json.dumps(result))
    else:
        print(f"Model: {a.model} ({model.name}, {model.flops_per_image() / 1e6:.1f} MFLOP per image)")
        print(f"Backend: {runner.backend}, {runner.precision}, batch size {result['batch_size']}")
        print(f"Images: {result['images']}")
        if a.repeat > 1:
            print(f"Time: {seconds:.4g} seconds, median of {a.repeat - 1} warm runs "
                  f"({result['images_per_second']:,.0f} images/s); first run {first:.4g} s; "
                  f"loading took {result['load_seconds']:.3g} s")
        else:
            print(f"Time: {seconds:.4g} seconds ({result['images_per_second']:,.0f} images/s; "
                  f"loading took {result['load_seconds']:.3g} s)")
        print(f"Accuracy: {result['accuracy']:.4f} ({correct}/{len(x)})")
        if a.report:
            print(f"Report: {a.report}")
    return 0


def cmd_info(a) -> int:
    from .formats import load_model

    model = load_model(a.model)
    print(model.summary())
    if model.meta:
        print(json.dumps(model.meta, indent=2))
    return 0


def cmd_convert(a) -> int:
    from .formats import load_model, save_article, save_bundle

    model = load_model(a.source)
    if a.to == "article":
        save_article(model, a.dest)
    else:
        save_bundle(model, a.dest)
    print(f"wrote {a.dest} ({a.to})")
    return 0


def cmd_bench(a) -> int:
    from .bench.main import command

    return command(a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnrt", description="A small, fast inference runtime for CNNs.")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("eval", help="run a model over labelled images and report time and accuracy (the main job)")
    e.add_argument("--model", default=_default(DEFAULT_MODEL),
                   help="a .safetensors bundle or a directory in the article's raw format (default: the shipped Deep MNIST)")
    e.add_argument("--images", default=_default(DEFAULT_IMAGES), help="IDX images, raw or .gz (default: MNIST test set)")
    e.add_argument("--labels", default=_default(DEFAULT_LABELS), help="IDX labels, raw or .gz")
    e.add_argument("--limit", type=int, default=None, help="use only the first N images (the article used 5000)")
    e.add_argument("--backend", default="auto", help="auto (default: the GPU if usable, else numpy), numpy or cuda")
    e.add_argument("--precision", choices=("fp32", "fp16"), default=None,
                   help="fp32, or fp16 storage with fp32 accumulation (default: fp32 on the CPU, fp16 on the GPU)")
    e.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the backend's)")
    e.add_argument("--repeat", type=int, default=1,
                   help="run N times; Time is then the median of the warm runs (all but the first)")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    e.add_argument("--report", default=None, metavar="PATH", help="also write a self-contained HTML page: accuracy, "
                   "confusion matrix, per-class precision and recall, the most confident mistakes (cnnrt[report])")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="describe a model file")
    i.add_argument("model", nargs="?", default=_default(DEFAULT_MODEL))
    i.set_defaults(func=cmd_info)

    c = sub.add_parser("convert", help="convert between the bundle and the article's raw format")
    c.add_argument("source", help="a bundle file or an article-format directory")
    c.add_argument("dest")
    c.add_argument("--to", choices=("bundle", "article"), required=True)
    c.set_defaults(func=cmd_convert)

    b = sub.add_parser("bench", help="time cnnrt against the installed frameworks (TensorFlow, ONNX Runtime, PyTorch, JAX) on the same model and images",
                       description="Runs the same model and images through cnnrt and every installed peer, alternating, "
                                   "warm-up first, several rounds; prints medians with spread and ratios to cnnrt. "
                                   "Peers that are not installed are skipped with a note (pip install 'cnnrt[bench]').")
    b.add_argument("--model", default=_default(DEFAULT_MODEL), help="a .safetensors bundle or an article-format directory")
    b.add_argument("--images", default=_default(DEFAULT_IMAGES), help="IDX images, raw or .gz (default: MNIST test "
                   "set), or 'random': seeded random images of the model's input shape")
    b.add_argument("--sizes", default=None, help="comma-separated image counts to time (default: 5000,10000)")
    b.add_argument("--rounds", type=int, default=None, help="timed rounds per runtime (default: 5)")
    b.add_argument("--peers", default="all", help="comma-separated peers, 'all' (default) or 'none'; cnnrt always runs. "
                   "Known: keras, tf-function, onnxruntime, torch, torch-compile, jax")
    b.add_argument("--batch-size", default=None, help="one batch size, or comma-separated candidates of which each "
                   "runtime gets its fastest (default: 50,100,250,500,1000)")
    b.add_argument("--latency-calls", type=int, default=None, help="single-image calls per round (default: 50)")
    b.add_argument("--cold-rounds", type=int, default=None, help="fresh processes per runtime for import and first-call time (default: 3)")
    b.add_argument("--no-cold", action="store_true", help="skip the fresh-process import and first-call timings")
    b.add_argument("--quick", action="store_true", help="a short run for trying things: 1,000 images, 2 rounds, 1 fresh process")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    b.add_argument("--json-out", default=None, metavar="PATH", help="also write the JSON to PATH")
    b.add_argument("--chart", default=None, metavar="PATH", help="write a PNG chart (needs matplotlib)")
    b.add_argument("--markdown", default=None, metavar="PATH", help="write the Markdown report to PATH")
    b.add_argument("--doc", default=None, metavar="PATH", help="replace the cpu-bench section of PATH (docs/benchmarks.md) with the report")
    b.add_argument("--note", action="append", default=[], metavar="TEXT", help="add a note to the report (repeatable)")
    b.add_argument("--from-json", default=None, metavar="PATH", help="measure nothing: report (table, chart, Markdown) from a JSON that --json-out wrote")
    b.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("train", help="train the Deep MNIST net with TensorFlow/Keras and export it")
    t.add_argument("--images", default=_default("data/mnist/train-images-idx3-ubyte.gz"))
    t.add_argument("--labels", default=_default("data/mnist/train-labels-idx1-ubyte.gz"))
    t.add_argument("--test-images", default=_default(DEFAULT_IMAGES))
    t.add_argument("--test-labels", default=_default(DEFAULT_LABELS))
    t.add_argument("--out", default="models/deep_mnist", help="output directory (default: %(default)s)")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--batch-size", type=int, default=50)
    t.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate, cosine-decayed")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CnnrtError as e:
        print(f"cnnrt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnrt: interrupted", file=sys.stderr)
        return 130
