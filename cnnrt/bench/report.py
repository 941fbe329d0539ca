"""What `cnnrt bench` prints and writes: a terminal table, JSON, Markdown, a PNG chart."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .stats import summarize

DOC_START = "<!-- section: cpu-bench"
DOC_END = "<!-- end: cpu-bench -->"


def _med(samples):
    return summarize(samples)["median"] if samples else None


def results_dict(meta: dict, entries) -> dict:
    """Everything, JSON-ready: run metadata, then one object per runtime with samples and stats."""
    return {**meta, "runtimes": [e.summary() for e in entries]}


# ---------------------------------------------------------------- formatting

def _num(v, digits=3):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:#.{digits}g}"


def _ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def _stat(samples, scale=1.0, spread="range"):
    """'median [min-max]' (or [q1-q3] for spread='iqr'), scaled."""
    if not samples:
        return "-"
    s = summarize(samples)
    lo, hi = (s["q1"], s["q3"]) if spread == "iqr" else (s["min"], s["max"])
    return f"{_num(s['median'] * scale)} [{_num(lo * scale)}-{_num(hi * scale)}]"


def _rows(res: dict):
    """(throughput header, rows), (startup header, rows) from a results dict."""
    sizes = [int(n) for n in res["options"]["sizes"]]
    flops = res["model"]["flops_per_image"]
    floor = res["floor_seconds"]
    h1 = ["runtime", "batch"]
    for n in sizes:
        h1 += [f"{n:,} images, s", "x cnnrt"]
    n = max(sizes)
    h1 += [f"images/s ({n:,})", "GFLOP/s", "floor/time"]
    h2 = ["runtime", "version", "1 image, ms [IQR]", "x cnnrt", "first call, s", "x cnnrt",
          "import, s", "x cnnrt", "memory MB", "x cnnrt", "installed MB", "x cnnrt", "argmax agree", "max abs diff"]
    r1, r2 = [], []
    for e in res["runtimes"]:
        if e["skipped"]:
            continue
        row = [e["label"], str(e["batch_size"])]
        for m in sizes:
            t = e["throughput"].get(str(m))
            row += [_stat(t["samples"]) if t else "-", _ratio(e["ratios"].get(f"throughput_{m}"))]
        t = e["throughput"].get(str(n))
        med = t["median"] if t else None
        row += [_num(n / med) if med else "-", _num(flops * n / med / 1e9) if med else "-",
                f"{100 * floor[str(n)] / med:.0f}%" if med else "-"]
        r1.append(row)
        lat = e["latency"]
        r2.append([
            e["label"], e["version"],
            _stat(lat["samples"], 1e3, "iqr") if lat else "-", _ratio(e["ratios"].get("latency")),
            _stat(e["first_call_seconds"]["samples"]) if e["first_call_seconds"] else "-",
            _ratio(e["ratios"].get("first_call_seconds")),
            _stat(e["import_seconds"]["samples"]) if e["import_seconds"] else "-",
            _ratio(e["ratios"].get("import_seconds")),
            _num(e["peak_rss_bytes"]["median"] / 1e6) if e.get("peak_rss_bytes") else "-",
            _ratio(e["ratios"].get("peak_rss_bytes")),
            _num(e["installed_bytes"] / 1e6) if e["installed_bytes"] else "-",
            _ratio(e["ratios"].get("installed_bytes")),
            "-" if e["agreement"] is None else f"{100 * e['agreement']:.2f}%",
            "-" if e["max_abs_diff"] is None else f"{e['max_abs_diff']:.1e}",
        ])
    return (h1, r1), (h2, r2)


def _text_table(header, rows) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def _md_table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _preamble(res: dict) -> list[str]:
    m, mach, mm = res["model"], res["machine"], res["matmul"]
    sizes = [int(n) for n in res["options"]["sizes"]]
    floors = ", ".join(f"{n:,} images >= {res['floor_seconds'][str(n)]:.3g} s" for n in sizes)
    lines = [
        f"Model: {m['name']} ({m['path']}), {m['flops_per_image'] / 1e6:.2f} MFLOP per image "
        f"({m['parameters']:,} parameters); images: {res['images']['path']} (first {max(sizes):,})",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, {mach['system']}; Python {mach['python']}, NumPy {mach['numpy']}; "
        f"{res['date']}",
        f"Floor: NumPy float32 matrix product {mm['flops_per_second'] / 1e9:.0f} GFLOP/s "
        f"(best of {mm['repeats']}, {mm['n']}x{mm['n']}) -> {floors}",
        f"Each figure: median [min-max] of {res['options']['rounds']} rounds (latency: median [IQR] of "
        f"{res['options']['rounds'] * res['options']['latency_calls']} single-image calls; first call and import: "
        f"{res['options']['cold_rounds']} fresh process{'es' if res['options']['cold_rounds'] != 1 else ''}); "
        f"'x cnnrt' = the figure / cnnrt's (below 1: less than cnnrt).",
    ]
    load = res.get("other_load")
    if load:
        lines.append(f"Other load during the run: {load['other_cpu_seconds']:.0f} CPU-seconds from other processes in "
                     f"{load['wall_seconds']:.0f} s (an average {load['other_cores_average']:.2f} of {mach['cores']} cores).")
    return lines


def _notes(res: dict) -> list[str]:
    out = list(res.get("notes") or [])
    for e in res["runtimes"]:
        if e["skipped"]:
            out.append(f"{e['label']} ({e['name']}): skipped: {e['skipped']}")
        for n in e["notes"]:
            out.append(f"{e['label']}: {n}")
    return out


def text(res: dict) -> str:
    (h1, r1), (h2, r2) = _rows(res)
    parts = _preamble(res) + ["", "Throughput, at each runtime's best batch size", _text_table(h1, r1), "",
                              "Latency, start-up, footprint, agreement with cnnrt fp32",
                              _text_table(h2, r2)]
    notes = _notes(res)
    if notes:
        parts += [""] + [f"note: {n}" for n in notes]
    return "\n".join(parts)


METHOD = """\
How it measures (`cnnrt/bench/`, peers in `cnnrt/peers/`): every runtime gets the same float32 NHWC
images and a model built from the same cnnrt bundle (Keras via `set_weights`, an ONNX graph written
with `onnx.helper`, a PyTorch `nn.Sequential`, a jitted JAX function; any NHWC to NCHW transpose
happens inside the timed call). Each runtime is warmed up, then runs at its fastest batch size among
the candidates; the timed rounds alternate between runtimes, the order rotating each round. "First
call" is a fresh Python process importing the framework, loading the model file (the `.onnx` file
for ONNX Runtime, the bundle otherwise) and answering one image (torch.compile with an empty compile
cache, so it compiles from scratch); "import" is the import statement alone in that process,
"memory" that process's peak resident memory after its first answer. "Installed MB" is the package
with everything it requires, each distribution counted once. Agreement is against cnnrt fp32 on the
largest image set. The floor is FLOPs per image times images over the best float32 matrix-product
rate NumPy reaches on this machine. FLOPs are those of direct convolution (a multiply-add counts 2):
a runtime that does fewer multiplications, as cnnrt's CPU backend does with Winograd convolution, or
whose GEMM beats NumPy's BLAS, can pass 100% of the floor. The article's one comparison was 5,000
images: its GPU pipeline 3.29 s against TensorFlow on the CPU 5.4 s. `pip install 'cnnrt[bench]'`
installs the TensorFlow, ONNX Runtime and PyTorch peers; JAX is optional (`pip install jax`). GPU
peers (PyTorch, torch.compile, JAX on CUDA) are measured by `bench/bench_gpu.py` (the CUDA section)."""


def markdown(res: dict, chart: str | None = None) -> str:
    (h1, r1), (h2, r2) = _rows(res)
    parts = ["Produced by:", "", "```", res["command"], "```", ""]
    if res.get("rendered_by"):
        parts += ["and written out from its JSON (nothing re-measured) by:", "", "```", res["rendered_by"], "```", ""]
    parts += [f"- {line}" for line in _preamble(res)]
    parts += ["", "Throughput, at each runtime's best batch size (floor/time: the machine's floor over the "
              "runtime's time; 100% = the direct-convolution FLOPs at the measured matrix-product rate):", "",
              _md_table(h1, r1), "",
              "Latency, start-up (each in a fresh process), installed size (the package and what it requires), "
              "agreement with cnnrt fp32 over the largest image set:", "", _md_table(h2, r2)]
    notes = _notes(res)
    if notes:
        parts += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    if chart:
        parts += ["", f"![cnnrt bench chart]({chart})"]
    parts += ["", METHOD]
    return "\n".join(parts) + "\n"


def update_doc(path: str | os.PathLike, body: str | None) -> None:
    """Replace what lies between this section's markers in `path`, keeping the markers and heading.

    body None only checks that the document exists and has the markers."""
    from ..errors import CnnrtError

    path = Path(path)
    try:
        doc = path.read_text()
    except OSError as e:
        raise CnnrtError(f"{path}: cannot read the document to update ({e})") from None
    start = doc.find(DOC_START)
    end = doc.find(DOC_END)
    if start < 0 or end < start:
        raise CnnrtError(f"{path}: no section between '{DOC_START} ...' and '{DOC_END}' to fill")
    if body is None:
        return
    start_line_end = doc.index("\n", start) + 1
    heading = "## `cnnrt bench` on the CPU: cnnrt against the frameworks\n\n"
    m = re.match(r"(## [^\n]*\n\n?)", doc[start_line_end:end])
    if m:
        heading = m.group(1) if m.group(1).endswith("\n\n") else m.group(1) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # atomic: a failed write leaves the old file
    try:
        tmp.write_text(doc[:start_line_end] + heading + body + doc[end:])
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------- chart

def chart(res: dict, path: str | os.PathLike) -> None:
    """A PNG: one horizontal bar panel per figure, cnnrt highlighted, min-max whiskers, floor lines."""
    try:
        import matplotlib
    except ImportError:
        from ..errors import BackendUnavailable

        raise BackendUnavailable("--chart needs matplotlib: pip install 'cnnrt[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [e for e in res["runtimes"] if not e["skipped"]]
    labels = [e["label"] for e in rows]
    sizes = [int(n) for n in res["options"]["sizes"]]
    panels = []
    for n in sorted(sizes, reverse=True):
        panels.append((f"{n:,} images (s), best batch", [(e["throughput"].get(str(n)) or None) for e in rows], 1.0,
                       res["floor_seconds"][str(n)]))
    panels.append(("single-image latency (ms), whiskers IQR",
                   [{"median": s["median"], "min": s["q1"], "max": s["q3"]} if (s := e["latency"]) else None
                    for e in rows], 1e3, None))
    panels.append(("first call in a fresh process (s)", [e["first_call_seconds"] for e in rows], 1.0, None))
    panels.append(("import (s)", [e["import_seconds"] for e in rows], 1.0, None))
    panels.append(("peak memory of that process (MB)", [e.get("peak_rss_bytes") for e in rows], 1e-6, None))
    panels.append(("installed size with dependencies (MB)",
                   [{"median": e["installed_bytes"], "min": e["installed_bytes"], "max": e["installed_bytes"]}
                    if e["installed_bytes"] else None for e in rows], 1e-6, None))
    panels = [p for p in panels if any(p[1])]  # a figure nobody measured gets no panel
    cols = 3 if len(panels) <= 6 else 4
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, max(0.45 * len(rows), 1.6) * nrows + 1.6 * nrows + 0.8),
                             squeeze=False)
    colors = ["#d62728" if e["name"] == "cnnrt" else "#1f77b4" for e in rows]
    for ax, (title, stats, scale, floor) in zip(axes.flat, panels):
        y = range(len(rows))
        med = [s["median"] * scale if s else 0 for s in stats]
        lo = [(s["median"] - s["min"]) * scale if s else 0 for s in stats]
        hi = [(s["max"] - s["median"]) * scale if s else 0 for s in stats]
        ax.barh(y, med, xerr=[lo, hi], color=colors, capsize=3, error_kw={"elinewidth": 1})
        positive = [v for v in med if v > 0]
        log = "latency" in title and positive and max(positive) > 20 * min(positive)
        if log:  # Keras' predict() is ~100x the others for one image: a log axis keeps them readable
            from matplotlib import ticker

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_title(title.replace("(ms)", "(ms, log scale)"), fontsize=10)
            ax.set_xlim(right=max(v + h for v, h in zip(med, hi)) * 4)  # room for the labels
        for yi, (v, h, s) in enumerate(zip(med, hi, stats)):
            ax.text(v + h, yi, f"  {_num(v)}" if s else " n/a", va="center", fontsize=8)
        if floor:
            ax.axvline(floor * scale, color="k", ls="--", lw=1)
            ax.text(floor * scale, len(rows) - 0.4, " floor", fontsize=8, va="bottom")
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        if not log:
            ax.set_title(title, fontsize=10)
        if not log:
            ax.margins(x=0.25)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    mach = res["machine"]
    fig.suptitle(f"cnnrt bench: {res['model']['name']} ({res['model']['flops_per_image'] / 1e6:.1f} MFLOP/image) on "
                 f"{mach['cpu']}, {mach['cores']} cores, {res['date']}; bars: median of "
                 f"{res['options']['rounds']} rounds, whiskers: min-max", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
