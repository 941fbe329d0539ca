"""The `cnnrt` command. Heavy modules are imported inside each command, so `--help` is instant."""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import batch, import_cmd, predict_cmd
from .errors import CnnrtError
from .import_cmd import scale_arg

DEFAULT_MODEL = "models/deep_mnist/deep_mnist.safetensors"
DEFAULT_IMAGES = "data/mnist/t10k-images-idx3-ubyte.gz"
DEFAULT_LABELS = "data/mnist/t10k-labels-idx1-ubyte.gz"


def _default(rel: str) -> str:
    """The shipped file for one of the DEFAULT_* names: package data (cnnrt/data/), found wherever
    cnnrt is installed, not in a repository checkout."""
    from . import resources

    found = {DEFAULT_MODEL: resources.shipped_model, DEFAULT_IMAGES: resources.mnist_test_images,
             DEFAULT_LABELS: resources.mnist_test_labels}
    if rel not in found:
        raise KeyError(f"{rel} is not shipped with cnnrt")
    return str(found[rel]())


def _shipped_model() -> str:
    return _default(DEFAULT_MODEL)


def cmd_train(a) -> int:
    from . import datasets
    from .train import train

    if (a.images is None) != (a.labels is None):
        raise CnnrtError("--images and --labels go together (training images and their labels)")
    if (a.test_images is None) != (a.test_labels is None):
        raise CnnrtError("--test-images and --test-labels go together")
    for flag, v in (("--epochs", a.epochs), ("--batch-size", a.batch_size), ("--limit", a.limit),
                    ("--test-limit", a.test_limit)):
        if v is not None and v < 1:
            raise CnnrtError(f"{flag} must be at least 1, got {v}")
    if a.images is None:
        a.images, a.labels = datasets.train_files(a.dataset)
    if a.test_images is None:  # the test set follows the dataset
        a.test_images, a.test_labels = datasets.test_files(a.dataset, "--test-images and --test-labels")
    train(a.images, a.labels, a.test_images, a.test_labels, a.out, arch=a.arch, dataset=a.dataset,
          epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, limit=a.limit,
          test_limit=a.test_limit, force=a.force, quiet=a.quiet)
    return 0


def _eval_data(a, model):
    """Images and labels for eval, checked against the model, with the files named in errors.
    Without --images or --dataset: the test set of the dataset the model says it was trained on
    (its provenance's "dataset", as `cnnrt train` writes it), else MNIST's."""
    from . import datasets
    from .idx import check_labels, load_mnist

    if a.dataset is not None and (a.images is not None or a.labels is not None):
        raise CnnrtError(f"--dataset {a.dataset} names the test images and labels; it does not go with "
                         f"--images or --labels")
    if a.images is None and a.labels is not None:
        raise CnnrtError(f"--labels {a.labels} without --images would score the MNIST test images against "
                         f"those labels; pass the images they belong to with --images")
    if a.images is not None and a.labels is None:
        raise CnnrtError(f"--images {a.images} needs --labels (an IDX file of one label per image): "
                         f"eval measures accuracy")
    a.data = None  # the dataset eval chose, if not the default MNIST
    if a.images is not None:
        images, labels = a.images, a.labels
    else:
        trained_on = (model.meta or {}).get("dataset")
        name = a.dataset or (trained_on if trained_on in datasets.NAMES else "mnist")
        images, labels = datasets.test_files(name)
        if a.dataset is not None or name != "mnist":
            a.data = f"{datasets.get(name).title} test set" + ("" if a.dataset else ", the model's dataset")
    x, y = load_mnist(images, labels)
    h, w, c = model.input_shape
    got = x.shape[1:] if x.ndim == 4 else x.shape[1:] + (1,)
    if got != (h, w, c):
        raise CnnrtError(f"{images}: images of shape {got} (height, width, channels) do not fit the model's "
                         f"input ({h}, {w}, {c})")
    check_labels(y, model.num_classes, labels)
    return x, y


def cmd_eval(a) -> int:
    import time

    import numpy as np

    from . import backends
    from .formats import load_model
    from .progress import bar

    for flag, v in (("--limit", a.limit), ("--batch-size", a.batch_size), ("--repeat", a.repeat)):
        if v is not None and v < 1:
            raise CnnrtError(f"{flag} must be at least 1, got {v}")
    t0 = time.perf_counter()
    if a.input_scale is None:
        model = load_model(a.model)
    else:
        from .import_cmd import load_with_preprocess
        model = load_with_preprocess(a.model, input_scale=a.input_scale)
    x, y = _eval_data(a, model)
    if a.limit is not None:
        x, y = x[:a.limit], y[:a.limit]
    name, note = backends.resolve(a.backend)
    if note and not a.json:
        print(note, file=sys.stderr)
    if a.report:
        from .report import check_destination
        check_destination(a.report)  # before the long work: matplotlib is there, the folder is writable
    runner = backends.prepare(model, name, a.precision)
    t1 = time.perf_counter()
    # The first run carries a progress bar (drawn only on a terminal, without --quiet/--json); the
    # runner takes the same path with or without it, so the first and warm runs time the same code.
    with bar(len(x), "eval", quiet=a.quiet or a.json, min_total=2000) as progress:
        pred = runner.predict(x, batch_size=a.batch_size, progress=progress)
    first = time.perf_counter() - t1
    used = runner.batch_size_used
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
        "batch_size": used,  # what the runner really ran, not what was asked
        "batch_size_requested": a.batch_size,
        "model": str(a.model),
    }
    if a.data:
        result["data"] = a.data
    if hasattr(runner, "summary"):  # which nodes ran fused, on generic kernels, on the host
        result["kernels"] = runner.summary(a.batch_size)
    if name == "numpy":  # a layer chain runs on the planner or the staged engine: which one did
        from .backends.chain_engine import engine_used
        engine = engine_used(runner)
        if engine:
            result["engine"] = engine
    if a.report:  # one more, untimed run for the probabilities; the page scores the predictions timed above
        from .report import class_names, write_report
        probs = runner.probabilities(x, batch_size=a.batch_size)
        write_report(a.report, x, y, probs, class_names(model.meta, model.num_classes, getattr(model, "labels", None)),
                     {**result, "model_name": model.name}, predictions=pred)
        result["report"] = str(a.report)
    if a.json:
        print(json.dumps(result))
    else:
        print(f"Model: {a.model} ({model.name}, {model.flops_per_image() / 1e6:.1f} MFLOP per image)")
        asked = "" if a.batch_size in (None, used) else f" (asked for {a.batch_size})"
        print(f"Backend: {runner.backend}, {runner.precision}, batch size {used}{asked}")
        if result.get("kernels"):
            print(f"Kernels: {result['kernels']}")
        if result.get("engine"):
            print(f"Engine: {result['engine']}")
        print(f"Images: {result['images']}" + (f" ({a.data})" if a.data else ""))
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
    if a.backend:
        from .backends.plan_info import plan_lines
        print("\n".join(plan_lines(model, a.backend, a.precision, a.batch_size)))
    return 0


def cmd_convert(a) -> int:
    from .formats import ARTICLE_SIDECAR, load_model, save_article, save_bundle

    model = load_model(a.source)
    if a.to == "article":
        save_article(model, a.dest, overwrite=a.force)
        print(f"wrote {a.dest} (article: the 8 raw tensors, and {ARTICLE_SIDECAR} with the name {model.name!r}"
              + (" and the provenance)" if model.meta else ")"))
    else:
        save_bundle(model, a.dest, overwrite=a.force)
        print(f"wrote {a.dest} (bundle, model {model.name!r}" + (", with its provenance)" if model.meta else ")"))
    return 0


def cmd_bench(a) -> int:
    from .bench.main import command

    return command(a)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="cnnrt", description="A small, fast inference runtime for CNNs.")
    p.add_argument("--version", action="version", version=f"cnnrt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("eval", help="run a model over labelled images and report time and accuracy (the main job)")
    e.add_argument("--model", default=_shipped_model(),
                   help="a .safetensors bundle or a directory in the article's raw format (default: the shipped Deep MNIST)")
    e.add_argument("--images", default=None, help="IDX images (N, H, W) or (N, H, W, C), raw or .gz "
                   "(default: the MNIST test set, shipped with cnnrt)")
    e.add_argument("--labels", default=None, help="IDX labels of those images, raw or .gz (required with --images)")
    e.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default=None,
                   help="the test set of a known dataset instead of --images/--labels (Fashion-MNIST only in the "
                   "source repository; default: the model's own dataset as `cnnrt train` records it, else MNIST)")
    e.add_argument("--limit", type=int, default=None, help="use only the first N images (the article used 5000)")
    e.add_argument("--backend", default="auto", help="auto (default: the GPU if usable, else numpy), numpy or cuda")
    e.add_argument("--precision", choices=("fp32", "fp16"), default=None,
                   help="fp32, or fp16 storage with fp32 accumulation (default: fp32 on the CPU, fp16 on the GPU)")
    e.add_argument("--batch-size", type=int, default=None, help="images per batch (default: the backend's)")
    e.add_argument("--repeat", type=int, default=1,
                   help="run N times; Time is then the median of the warm runs (all but the first)")
    e.add_argument("--input-scale", type=scale_arg, default=None, metavar="S", help="multiply uint8 pixels by S "
                   "(default: what the model file stores; 1/255 for an .onnx, .keras or .h5 file)")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    e.add_argument("--report", default=None, metavar="PATH", help="also write a self-contained HTML page: accuracy, "
                   "confusion matrix, per-class precision and recall, the most confident mistakes (cnnrt[report])")
    e.add_argument("--quiet", action="store_true", help="no progress bar (there is none unless stderr is a terminal)")
    e.set_defaults(func=cmd_eval)

    i = sub.add_parser("info", help="describe a model file")
    i.add_argument("model", nargs="?", default=_shipped_model())
    i.add_argument("--backend", choices=("numpy", "cuda"), default=None, help="also print which kernel runs each node")
    i.add_argument("--precision", choices=("fp32", "fp16"), default=None, help="the plan's precision (default: the backend's)")
    i.add_argument("--batch-size", type=int, default=None, help="the plan's batch size (default 1)")
    i.set_defaults(func=cmd_info)

    c = sub.add_parser("convert", help="convert between the bundle and the article's raw format")
    c.add_argument("source", help="a bundle file or an article-format directory")
    c.add_argument("dest")
    c.add_argument("--to", choices=("bundle", "article"), required=True)
    c.add_argument("--force", action="store_true", help="replace DEST's files if it exists (default: refuse)")
    c.set_defaults(func=cmd_convert)

    b = sub.add_parser("bench", help="time cnnrt against the installed frameworks (TensorFlow, ONNX Runtime, PyTorch, JAX) on the same model and images",
                       description="Runs the same model and images through cnnrt and every installed peer, alternating, "
                                   "warm-up first, several rounds; prints medians with spread and ratios to cnnrt. "
                                   "Peers that are not installed are skipped with a note (pip install 'cnnrt[bench]').")
    b.add_argument("--model", default=_shipped_model(), help="any model cnnrt loads (bundle, article directory, .onnx, .keras)")
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

    from .serve.cli import add_parser as add_serve

    add_serve(sub)

    t = sub.add_parser("train", help="train a CNN (Deep MNIST or a small ResNet) with TensorFlow/Keras and export it",
                       description="Trains, then writes into OUT the bundle NAME.safetensors (deep_mnist for --arch "
                                   "deep_mnist on MNIST, else DATASET_ARCH: fashion_resnet, mnist_resnet, ...), "
                                   "OUT/article/ (the article's raw format, which can hold only the Deep MNIST net: "
                                   "--arch deep_mnist only) and OUT/training.json, together: built in a temporary "
                                   "directory beside OUT and moved in only when all are complete. Files already in "
                                   "OUT are never replaced without --force.")
    t.add_argument("--out", required=True, help="output directory (created if missing)")
    t.add_argument("--force", action="store_true", help="replace a model already in OUT")
    t.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist",
                   help="the training and test sets, from data/ of the source repository (default: mnist); "
                   "Fashion-MNIST's class names are stored in the bundle")
    t.add_argument("--arch", choices=("deep_mnist", "resnet"), default="deep_mnist",
                   help="deep_mnist (default): the article's net; resnet: a small residual CNN with "
                   "BatchNormalization (78k parameters)")
    t.add_argument("--images", default=None, help="training images, IDX (default: the dataset's)")
    t.add_argument("--labels", default=None, help="their labels, IDX")
    t.add_argument("--test-images", default=None, help="test images, IDX (default: the dataset's test set)")
    t.add_argument("--test-labels", default=None, help="their labels, IDX")
    t.add_argument("--limit", type=int, default=None, help="use only the first N training images (a tenth of them for validation)")
    t.add_argument("--test-limit", type=int, default=None, help="test on only the first N test images")
    t.add_argument("--epochs", type=int, default=None, help="default: 8 for deep_mnist, 7 for resnet")
    t.add_argument("--batch-size", type=int, default=None, help="default: 50 for deep_mnist, 64 for resnet")
    t.add_argument("--lr", type=float, default=1e-3, help="peak Adam learning rate, cosine-decayed")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true", help="no progress bar from Keras (there is none unless stdout "
                   "is a terminal)")
    t.set_defaults(func=cmd_train)

    predict_cmd.add_parser(sub)
    import_cmd.add_parser(sub)
    batch.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CnnrtError as e:
        print(f"cnnrt: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `cnnrt info | head`: the reader has gone; nothing is wrong, say nothing
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not complain
        except (OSError, ValueError):
            pass
        return 0
    except OSError as e:  # a file the OS would not read or write: say which and why, no traceback
        where = ": ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
        print(f"cnnrt: error: {where + ': ' if where else ''}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnrt: interrupted", file=sys.stderr)
        return 130
