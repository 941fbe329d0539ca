"""`cnnrt predict FILE...`: classify image files (PNG, JPEG, PGM/PBM, .npy, folders) with a model.

Image reading and preprocessing live in cnnrt/images.py; this module is the command: arguments,
one batched run through `cnnrt.load`'s session, and the printing. A file that cannot be used is
reported (stderr, and a JSON line with "error" under --json) and the others are still classified;
the exit status is then 2.
"""
from __future__ import annotations

import json
import sys

from .errors import CnnrtError, FormatError

RECIPES = ("auto", "mnist", "fashion", "resize")


def add_parser(sub) -> None:
    from .cli import DEFAULT_MODEL, _default

    p = sub.add_parser(
        "predict", help="classify image files: PNG, JPEG, PGM/PBM, NumPy .npy, or folders of them",
        description="Prints each image's label and top-k probabilities. Images of any size and either polarity "
                    "(black on white is fine) are preprocessed for the model: for a 28x28 single-channel model, "
                    "MNIST's own recipe (crop the digit, fit it in 20x20, centre it by its centre of mass); for "
                    "others, a resize. A folder means the image files directly inside it, sorted by name. A file "
                    "that cannot be read is reported and the others are still classified; the exit status is then 2. "
                    "Image files need Pillow: pip install 'cnnrt[images]'.")
    p.add_argument("files", nargs="+", metavar="FILE", help="image files, .npy arrays (one image or a stack), or folders")
    p.add_argument("--model", default=_default(DEFAULT_MODEL),
                   help="a .safetensors bundle or an article-format directory (default: the shipped Deep MNIST)")
    p.add_argument("--backend", default="auto", help="auto (default: the GPU if usable, else numpy), numpy or cuda")
    p.add_argument("--precision", choices=("fp32", "fp16"), default=None,
                   help="fp32, or fp16 storage with fp32 accumulation (default: fp32 on the CPU, fp16 on the GPU)")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="how many of the likeliest classes to print (default: 3)")
    p.add_argument("--preprocess", choices=RECIPES, default="auto",
                   help="mnist: MNIST's digit recipe (28x28x1 models only); fashion: Fashion-MNIST's conversion of "
                        "product photos (trim, longest edge to 28, centre, light item on black; 28x28x1 only); resize: "
                        "a plain resize, for images already framed like the model's (MNIST's own images, for "
                        "instance); auto (default): fashion for models trained on Fashion-MNIST, mnist for other "
                        "28x28 single-channel models, resize for others")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per image (JSON lines), in input order; failures get an \"error\" key")
    p.set_defaults(func=cmd_predict)


def cmd_predict(a) -> int:
    import numpy as np

    from . import images
    from .session import load

    if a.top_k < 1:
        raise CnnrtError(f"--top-k must be at least 1, got {a.top_k}")
    session = load(a.model, backend=a.backend, precision=a.precision)
    shape = session.input_shape
    recipe = a.preprocess
    if recipe == "auto":
        recipe = images.auto_recipe(session)
    elif recipe in ("mnist", "fashion") and not images.is_mnist_shaped(shape):
        raise CnnrtError(f"--preprocess {recipe} needs a 28x28 single-channel model; {a.model} takes {shape} (H, W, C)")

    # every entry: (source, pixels) or (source, error message), in the order given
    entries: list[tuple[str, object]] = []
    for arg in a.files:
        try:
            files = images.list_files(arg)
        except FormatError as e:
            entries.append((str(arg), e))
            continue
        for f in files:
            try:
                pictures = images.read_pictures(f)
            except FormatError as e:
                entries.append((str(f), e))
                continue
            for pic in pictures:
                try:
                    entries.append((pic.source, images.preprocess(pic, shape, recipe)))
                except FormatError as e:
                    entries.append((pic.source, e))

    good = [px for _, px in entries if not isinstance(px, Exception)]
    probs = np.zeros((0, session.num_classes), dtype=np.float32)
    if good:
        batch = np.stack(good)
        probs = session.probabilities(images.model_input(batch, session))

    if session.backend_note and not a.json:
        print(session.backend_note, file=sys.stderr)
    k = min(a.top_k, session.num_classes)
    labels = session.labels
    ran = {"model": str(a.model), "backend": session.backend, "precision": session.precision, "preprocess": recipe}
    if not a.json:
        print(f"Model: {a.model} ({session.name}), input {'x'.join(map(str, shape))}; backend {session.backend}, "
              f"{session.precision}; preprocessing: {recipe}; {len(good)} image(s)")
    failures = 0
    row = 0
    for source, px in entries:
        if isinstance(px, Exception):
            failures += 1
            print(f"cnnrt: error: {px}", file=sys.stderr)
            if a.json:
                print(json.dumps({"file": source, "error": str(px)}))
            continue
        p = probs[row]
        row += 1
        top = np.argsort(-p, kind="stable")[:k]
        if a.json:
            print(json.dumps({"file": source, "label": labels[top[0]], "class": int(top[0]),
                              "top": [{"label": labels[c], "class": int(c), "probability": float(p[c])} for c in top],
                              **ran}))
        else:
            alts = ", ".join(f"{labels[c]}: {p[c]:.3g}" for c in top)
            print(f"{source}: {labels[top[0]]}  ({alts})")
    if failures:
        print(f"cnnrt: {failures} of {len(entries)} input(s) could not be classified", file=sys.stderr)
        return 2
    return 0
