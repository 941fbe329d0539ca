"""`cnnrt bench` from start to end: load, measure, report."""
from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
import tempfile

from ..errors import CnnrtError
from . import harness, report, system

RANDOM_IMAGES = "random"  # --images random: seeded random uint8 images of the model's input shape


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise CnnrtError(f"{what}: expected comma-separated whole numbers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise CnnrtError(f"{what}: expected positive whole numbers, got {text!r}")
    return vals


def _prepare_output(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise CnnrtError(f"{path}: cannot create its directory ({e})") from None
    if not os.access(d, os.W_OK):
        raise CnnrtError(f"{path}: directory {d} is not writable")


def _this_command() -> str:
    if sys.argv[1:2] == ["bench"]:
        return "cnnrt bench " + " ".join(shlex.quote(v) for v in sys.argv[2:])
    return "cnnrt bench"


def _shown(path) -> str:
    """A path as a reader can reuse it: relative to the current directory when inside it."""
    p = os.path.abspath(path)
    rel = os.path.relpath(p)
    return str(path) if rel.startswith("..") else rel


def select_peers(spec: str | None):
    """cnnrt first, then the named peers (default: all known; 'none' for cnnrt alone)."""
    from ..peers import CnnrtPeer, get, peers

    chosen = [CnnrtPeer()]
    if spec in (None, "", "all"):
        chosen += peers()
    elif spec != "none":
        for name in (n.strip() for n in spec.split(",")):
            if name and name not in [p.name for p in chosen]:
                chosen.append(get(name))
    return chosen


def bench(model_path: str, images_path: str, peer_list, opts: harness.Options, command: str,
          measure_sizes: bool = True, log=print) -> dict:
    import numpy as np

    from ..formats import load_model
    from ..idx import read_idx
    from ..ir.chain import as_graph

    # any graph: cnnrt and ONNX Runtime run every one; peers that build a layer chain skip others
    model = as_graph(load_model(model_path))
    n = max(opts.sizes)
    notes = []
    if images_path == RANDOM_IMAGES:
        raw = np.random.default_rng(0).integers(0, 256, (n, *model.input_shape), dtype=np.uint8)
        notes.append(f"images: {n:,} random uint8 images of shape {tuple(model.input_shape)} (seed 0)")
    else:
        raw = read_idx(images_path)
        if raw.ndim == 3:
            raw = raw[..., None]
        if raw.ndim != 4 or raw.shape[1:] != tuple(model.input_shape):
            raise CnnrtError(f"{images_path}: images of shape {raw.shape[1:]} do not fit the model's input "
                             f"{tuple(model.input_shape)} (--images random times random images of that shape)")
    if n > len(raw):
        raise CnnrtError(f"asked for {n:,} images but {images_path} holds {len(raw):,}")
    scale = model.input_scale if raw.dtype == np.uint8 else 1.0
    images = np.ascontiguousarray(raw[:n].astype(np.float32) * np.float32(scale))
    pp = getattr(model, "preprocess", {}) or {}
    if raw.dtype == np.uint8 and (pp.get("mean") is not None or pp.get("std") is not None):
        images -= np.asarray(pp.get("mean", 0.0), np.float32)
        images /= np.asarray(pp.get("std", 1.0), np.float32)

    load = system.CpuUse()
    log("machine: measuring the matrix-product rate (the floor)")
    mm = system.matmul_rate(repeats=10)
    entries = harness.run(model, images, peer_list, opts, log=log)
    if opts.cold_rounds:
        with tempfile.TemporaryDirectory(prefix="cnnrt-bench-") as work:
            harness.cold_starts(model, peer_list, entries, model_path, opts.cold_rounds, work, log=log)
    mm_end = system.matmul_rate(repeats=10)  # again at the end: the best of both is the machine's rate
    if mm_end["flops_per_second"] > mm["flops_per_second"]:
        mm = mm_end
    if measure_sizes:
        harness.sizes_on_disk(peer_list, entries)
    harness.ratios(entries)
    flops = model.flops_per_image()
    meta = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": system.machine(),
        "model": {"path": _shown(model_path), "name": model.name, "flops_per_image": flops,
                  "parameters": int(sum(p.size for p in (model.params.values() if isinstance(model.params, dict) else model.params().values())))},
        "images": {"path": _shown(images_path), "count": int(n)},
        "options": {"sizes": list(opts.sizes), "rounds": opts.rounds, "batch_sizes": list(opts.batch_sizes),
                    "calibration_images": opts.calibration_images, "latency_calls": opts.latency_calls,
                    "cold_rounds": opts.cold_rounds, "pause_seconds": opts.pause},
        "matmul": mm,
        "floor_seconds": {str(k): flops * k / mm["flops_per_second"] for k in opts.sizes},
        "other_load": load.stop(),
        "notes": notes,
    }
    return report.results_dict(meta, entries)


def command(a) -> int:
    """The CLI entry (cnnrt.cli calls this with the parsed arguments)."""
    if a.quick:
        opts = harness.Options(sizes=(1000,), rounds=2, batch_sizes=(100, 500), calibration_images=500,
                               latency_calls=10, cold_rounds=1)
    else:
        opts = harness.Options()
    if a.sizes:
        opts.sizes = _ints(a.sizes, "--sizes")
    if a.rounds is not None:
        opts.rounds = a.rounds
    if a.batch_size:
        opts.batch_sizes = _ints(a.batch_size, "--batch-size")
    if a.latency_calls is not None:
        opts.latency_calls = a.latency_calls
    if a.cold_rounds is not None:
        opts.cold_rounds = a.cold_rounds
    if a.no_cold:
        opts.cold_rounds = 0
    opts.calibration_images = min(opts.calibration_images, max(opts.sizes))
    opts.check(10**12)
    if a.chart:
        try:
            import matplotlib  # noqa: F401  (fail before the long run, not after)
        except ImportError:
            raise CnnrtError("--chart needs matplotlib: pip install 'cnnrt[bench]'") from None

    for path in (a.json_out, a.chart, a.markdown):
        if path:
            _prepare_output(path)
    if a.doc:
        report.update_doc(a.doc, None)  # checks the document and its markers now, not after the run
    if a.from_json:
        try:
            with open(a.from_json) as f:
                res = json.load(f)
            res["runtimes"], res["command"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CnnrtError(f"{a.from_json}: not a JSON file written by cnnrt bench ({e})") from None
        res["rendered_by"] = _this_command()
        return _emit(a, res)
    peer_list = select_peers(a.peers)
    cmd = _this_command()
    from ..progress import bar

    # a bar over the timed rounds (and fresh-process rounds) on a terminal; the log lines go above it
    with bar(opts.rounds + opts.cold_rounds, "bench", unit="round", quiet=a.quiet) as progress:
        def log(*m):
            if a.quiet:
                return
            text = " ".join(str(v) for v in m)
            progress.write(text)
            if text.startswith(("round ", "cold round ")):
                progress.step()

        res = bench(a.model, a.images, peer_list, opts, cmd, log=log)
    return _emit(a, res)


def _emit(a, res: dict) -> int:
    if a.note:
        res["notes"] = list(res.get("notes") or []) + list(a.note)

    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(res, f, indent=1)
    chart_rel = None
    if a.chart:
        report.chart(res, a.chart)
        base = os.path.dirname(os.path.abspath(a.doc or a.markdown or "."))
        chart_rel = os.path.relpath(os.path.abspath(a.chart), base) if (a.doc or a.markdown) else a.chart
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(report.markdown(res, chart_rel))
    if a.doc:
        report.update_doc(a.doc, report.markdown(res, chart_rel))
    if a.json:
        print(json.dumps(res))
    else:
        print(report.text(res))
        for what, path in (("chart", a.chart), ("JSON", a.json_out), ("Markdown", a.markdown), ("document", a.doc)):
            if path:
                print(f"wrote {what}: {path}")
    return 0
