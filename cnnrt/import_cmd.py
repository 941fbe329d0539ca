"""`cnnrt import`: any model file cnnrt reads -> a bundle that carries its preprocessing and labels.

SRC is an .onnx, .keras or .h5 file, a bundle, or a directory in the article's format. The
bundle stores how uint8 pixels become the model's input, (pixels * scale - mean) / std per
channel, and the class names, so every later command and `cnnrt.load` use them without flags.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .errors import CnnrtError, FormatError


def scale_arg(text: str) -> float:
    """argparse type for --input-scale: a positive number or fraction ('1/255')."""
    from .importers.preprocess import parse_numbers

    try:
        vals = parse_numbers(text, "--input-scale")
    except FormatError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if len(vals) != 1 or vals[0] <= 0:
        raise argparse.ArgumentTypeError(f"--input-scale must be one positive number such as 1/255, got {text!r}")
    return vals[0]


def load_with_preprocess(path, input_scale: float | None = None, mean=None, std=None):
    """A model from any file cnnrt reads, with the given preprocessing replacing what it stores.

    For another framework's file the values describe that framework's model input (Keras's
    Rescaling folded at import composes with them); for a bundle they replace its own.
    """
    from .formats import load_model
    from .importers import importable, load_file
    from .importers.preprocess import compose
    from .ir.chain import as_graph

    if importable(path):
        return load_file(path, input_scale=input_scale, mean=mean, std=std)
    g = as_graph(load_model(path))
    if input_scale is None and mean is None and std is None:
        return g
    old = g.preprocess
    g.preprocess = compose(input_scale if input_scale is not None else old.get("scale"),
                           mean if mean is not None else old.get("mean"),
                           std if std is not None else old.get("std"),
                           channels=g.input_shape[-1] if g.input_shape else None, where=str(path))
    return g


def read_labels(arg: str, classes: int) -> list[str]:
    """--labels: a text file with one name per line, or names separated by commas."""
    p = Path(arg)
    if p.is_file():
        try:
            names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            raise FormatError(f"{p}: cannot read the labels file ({e})") from None
        while names and not names[-1]:
            names.pop()
        where = str(p)
    elif "," in arg:
        names, where = [s.strip() for s in arg.split(",")], "--labels"
    else:
        raise FormatError(f"--labels {arg!r}: no such file (give a file with one class name per line, "
                          f"or the names separated by commas)")
    if any(not n for n in names):
        raise FormatError(f"{where}: has an empty class name")
    if len(names) != classes:
        raise FormatError(f"{where}: {len(names)} class names for a model with {classes} classes")
    return names


BAR_MIN_BYTES = 8 << 20  # a source this large takes seconds to read, import and write: show the steps


def _source_bytes(path) -> int:
    """The size of SRC (a file, or an article directory's files); 0 if it cannot be seen (the
    reader then says why)."""
    p = Path(path)
    try:
        return sum(f.stat().st_size for f in p.iterdir() if f.is_file()) if p.is_dir() else p.stat().st_size
    except OSError:
        return 0


def cmd_import(a) -> int:
    from .formats import load_bundle, save_bundle
    from .importers.preprocess import parse_numbers
    from .ir.passes import optimize
    from .progress import bar

    dest = Path(a.dest)
    if dest.suffix != ".safetensors":
        raise CnnrtError(f"{dest}: the destination must be a .safetensors file")
    if os.path.lexists(dest) and not a.force:  # checked first: a long import must not end in a refusal
        raise CnnrtError(f"{dest}: exists; pass --force to replace it")
    mean = parse_numbers(a.mean, "--mean") if a.mean is not None else None
    std = parse_numbers(a.std, "--std") if a.std is not None else None
    # a bar over the four steps, on a terminal only, for a source large enough to take a while
    with bar(4, "import", unit="step", quiet=a.quiet or _source_bytes(a.source) < BAR_MIN_BYTES) as steps:
        steps.stage("reading")
        g = load_with_preprocess(a.source, a.input_scale, mean, std)
        steps.step()
        steps.stage("optimizing")
        g = optimize(g)
        steps.step()
        if a.labels is not None:
            g.labels = read_labels(a.labels, g.num_classes)
        if a.name:
            g.name = a.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            steps.stage("writing")
            save_bundle(g, tmp)
            steps.step()
            steps.stage("checking")
            back = load_bundle(tmp)  # what later commands will read: check it before it takes the name
            if os.path.lexists(dest) and not a.force:  # appeared meanwhile: still never replaced unasked
                raise CnnrtError(f"{dest}: exists; pass --force to replace it")
            os.replace(tmp, dest)
            steps.step()
        finally:
            if tmp.exists():
                tmp.unlink()
    if a.quiet:
        return 0
    pre = back.preprocess
    norm = "".join(f", {k} {', '.join(f'{v:.6g}' for v in pre[k])}" for k in ("mean", "std") if pre.get(k))
    print(f"wrote {dest}: {back.name}, input {back.input_shape}, {back.num_classes} classes"
          f"{' (labelled)' if back.labels else ''}, {len(back.nodes)} nodes; pixels x {pre['scale']:.6g}{norm}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("import", help="import an ONNX or Keras model (or re-save a bundle) with its preprocessing and labels",
                       description="Reads SRC (.onnx, .keras, .h5, a .safetensors bundle or an article-format directory) "
                                   "and writes a cnnrt bundle holding the graph, how uint8 pixels become its input "
                                   "((pixels * scale - mean) / std per channel) and the class names.")
    p.add_argument("source", metavar="SRC", help="an .onnx, .keras or .h5 file, a bundle, or an article-format directory")
    p.add_argument("dest", metavar="DEST", help="the bundle to write (.safetensors)")
    p.add_argument("--input-scale", type=scale_arg, default=None, metavar="S",
                   help="multiply uint8 pixels by S (default 1/255; 1 for a Keras model that starts with Rescaling; "
                        "a bundle keeps its own)")
    p.add_argument("--mean", default=None, metavar="M", help="subtract after scaling: one value or one per channel, "
                   "comma-separated (e.g. 0.485,0.456,0.406)")
    p.add_argument("--std", default=None, metavar="S", help="then divide: one value or one per channel")
    p.add_argument("--labels", default=None, metavar="FILE|a,b,c",
                   help="class names: a file with one per line, or comma-separated")
    p.add_argument("--name", default=None, help="the model's name (default: the source's)")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists (default: refuse)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors: no progress bar (there is none "
                   "unless stderr is a terminal), no summary line")
    p.set_defaults(func=cmd_import)
