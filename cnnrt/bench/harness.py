"""The timing loop. Fair by construction: the same float32 images and the same weights for every
runtime, warm-up first, each runtime at its own best batch size, several rounds that alternate
between runtimes (the order rotates each round), a short pause between runtimes so one's spinning
worker threads do not eat the next one's time; medians and spread over rounds.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field

from .stats import ratio, summarize

DEFAULT_SIZES = (5000, 10000)
DEFAULT_BATCH_SIZES = (50, 100, 250, 500, 1000)  # divide 5,000 and 10,000: no odd last batch
DEFAULT_ROUNDS = 5
DEFAULT_LATENCY_CALLS = 50
DEFAULT_COLD_ROUNDS = 3
PAUSE_SECONDS = 0.25


@dataclass
class Options:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    rounds: int = DEFAULT_ROUNDS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES  # candidates; one value = fixed
    calibration_images: int = 2000  # warm-up and batch-size choice (at least the largest candidate batch)
    latency_calls: int = DEFAULT_LATENCY_CALLS
    cold_rounds: int = DEFAULT_COLD_ROUNDS  # fresh-process import / first-call runs; 0 skips them
    pause: float = PAUSE_SECONDS

    def check(self, n_images: int) -> None:
        from ..errors import CnnrtError

        if not self.sizes or min(self.sizes) < 1:
            raise CnnrtError(f"image counts must be positive, got {self.sizes}")
        if max(self.sizes) > n_images:
            raise CnnrtError(f"asked for {max(self.sizes)} images but the image file holds {n_images}")
        if self.rounds < 1:
            raise CnnrtError(f"--rounds must be at least 1, got {self.rounds}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise CnnrtError(f"batch sizes must be positive, got {self.batch_sizes}")
        if self.latency_calls < 0 or self.cold_rounds < 0:
            raise CnnrtError("latency calls and cold rounds cannot be negative")


@dataclass
class Entry:
    """One runtime's results."""

    name: str
    label: str
    version: str = ""
    skipped: str | None = None  # why it did not run (missing package, failure)
    batch_size: int | None = None
    calibration: dict = field(default_factory=dict)  # batch size -> seconds for the calibration set
    prepare_seconds: float | None = None
    throughput: dict = field(default_factory=dict)  # images -> [seconds per round]
    latency: list = field(default_factory=list)  # seconds per single-image call
    import_seconds: list = field(default_factory=list)
    first_call_seconds: list = field(default_factory=list)
    peak_rss_bytes: list = field(default_factory=list)  # of the fresh process after its first answer
    installed_bytes: int | None = None
    installed_distributions: int | None = None
    agreement: float | None = None  # fraction of argmax equal to cnnrt fp32's
    max_abs_diff: float | None = None
    notes: list = field(default_factory=list)
    ratios: dict = field(default_factory=dict)  # figure -> this runtime's median / cnnrt's

    def summary(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()}
        d["throughput"] = {str(n): {"samples": s, **summarize(s)} for n, s in self.throughput.items() if s}
        for key in ("latency", "import_seconds", "first_call_seconds", "peak_rss_bytes"):
            s = getattr(self, key)
            d[key] = {"samples": s, **summarize(s)} if s else None
        d["calibration"] = {str(k): v for k, v in self.calibration.items()}
        return d


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def run(model, images, peers, options: Options, log=print) -> dict:
    """Benchmark `peers` (the first one is the baseline, cnnrt) on float32 NHWC `images`.

    A peer whose package is missing, or that fails to build or run, is skipped with a note and the
    run goes on. Returns the raw results (see report.results_dict for the JSON).
    """
    import numpy as np

    options.check(len(images))
    entries, infers = [], {}
    for peer in peers:
        e = Entry(peer.name, peer.label)
        entries.append(e)
        why = peer.missing() or (peer.unsupported(model) if model is not None else None)
        if why:
            e.skipped = why
            log(f"skip {peer.name}: {why}")
            continue
        try:
            e.version = peer.version()
            t, infer = _timed(peer.prepare, model)
            e.prepare_seconds = t
            infers[peer.name] = infer
        except Exception as ex:  # a peer that cannot build our model is skipped, not fatal
            e.skipped = f"failed to build: {type(ex).__name__}: {ex}"
            log(f"skip {peer.name}: {e.skipped}")

    live = [e for e in entries if e.skipped is None]
    biggest = max(options.sizes)
    candidates = [bs for bs in options.batch_sizes if bs <= biggest] or [min(options.batch_sizes)]
    calib = images[:min(max(options.calibration_images, max(candidates)), biggest)]

    # Warm-up and best batch size: every candidate once on the calibration set, then the fastest.
    for e in live:
        infer = infers[e.name]
        try:
            for bs in candidates:
                infer(calib, bs)  # warm-up (compiles, caches, thread pools)
                e.calibration[bs], _ = _timed(infer, calib, bs)
            for i in range(min(3, len(images))):
                infer(images[i:i + 1], 1)  # single-image warm-up
            e.batch_size = min(e.calibration, key=e.calibration.get)
            log(f"warm {e.name}: batch size {e.batch_size} "
                f"({', '.join(f'{k}: {v:.3f}s' for k, v in e.calibration.items())} for {len(calib)} images)")
        except Exception as ex:
            e.skipped = f"failed in warm-up: {type(ex).__name__}: {ex}"
            log(f"skip {e.name}: {e.skipped}")
        time.sleep(options.pause)
    live = [e for e in live if e.skipped is None]

    outputs = {}
    for r in range(options.rounds):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for e in order:
            infer = infers[e.name]
            try:
                for n in options.sizes:
                    t, out = _timed(infer, images[:n], e.batch_size)
                    e.throughput.setdefault(n, []).append(t)
                    if r == 0 and n == biggest:
                        outputs[e.name] = np.asarray(out, dtype=np.float32)
                time.sleep(options.pause)
                for i in range(options.latency_calls):
                    x1 = images[i % len(images):i % len(images) + 1]
                    t, _ = _timed(infer, x1, 1)
                    e.latency.append(t)
            except Exception as ex:
                e.skipped = f"failed in round {r + 1}: {type(ex).__name__}: {ex}"
                log(f"drop {e.name}: {e.skipped}")
                live = [x for x in live if x is not e]
            time.sleep(options.pause)
        log(f"round {r + 1}/{options.rounds}: " + ", ".join(
            f"{e.name} {e.throughput[biggest][-1]:.3f}s" for e in entries if e.throughput.get(biggest)))

    base = entries[0]
    reference = outputs.get(base.name)
    for e in entries:
        if e.name in outputs and reference is not None:
            out = outputs[e.name]
            if out.shape != reference.shape:
                e.notes.append(f"output shape {out.shape} differs from cnnrt's {reference.shape}")
                continue
            e.agreement = float((out.argmax(1) == reference.argmax(1)).mean())
            e.max_abs_diff = float(np.abs(out - reference).max())
    if reference is None:
        base.notes.append("no cnnrt output to compare with: agreement not measured")
    return entries


def cold_starts(model, peers, entries, bundle: str, rounds: int, workdir: str, log=print) -> None:
    """Import time and first-call time of each peer, each in fresh processes, alternating."""
    from .system import fresh_process

    by_name = {e.name: e for e in entries}
    artifacts = {}
    for peer in peers:
        e = by_name[peer.name]
        if e.skipped:
            continue
        try:
            artifacts[peer.name] = peer.export(model, bundle, workdir)
        except Exception as ex:
            e.notes.append(f"cold start not measured: export failed: {type(ex).__name__}: {ex}")
    for r in range(rounds):
        for peer in peers:
            e = by_name[peer.name]
            if peer.name not in artifacts:
                continue
            try:
                env = {}
                if peer.fresh_cache_env:  # no compile cache from earlier runs: a real cold start
                    env[peer.fresh_cache_env] = tempfile.mkdtemp(prefix=f"{peer.name}-cache-", dir=workdir)
                out = fresh_process(peer.name, peer.import_statement, artifacts[peer.name], model.input_shape,
                                    env_extra=env)
            except Exception as ex:
                e.notes.append(f"cold start failed: {ex}")
                del artifacts[peer.name]
                continue
            e.import_seconds.append(out["import_seconds"])
            e.first_call_seconds.append(out["first_call_seconds"])
            if out.get("peak_rss_bytes"):
                e.peak_rss_bytes.append(out["peak_rss_bytes"])
        log(f"cold round {r + 1}/{rounds}: " + ", ".join(
            f"{e.name} {e.first_call_seconds[-1]:.2f}s" for e in entries if e.first_call_seconds))


def sizes_on_disk(peers, entries) -> None:
    from .system import installed_size

    by_name = {e.name: e for e in entries}
    cache = {}
    for peer in peers:
        e = by_name[peer.name]
        if e.skipped and "not installed" in e.skipped:
            continue
        dist = peer.installed_distribution()
        if dist is None:
            continue
        if dist not in cache:
            cache[dist] = installed_size(dist)
        e.installed_bytes = cache[dist]["bytes"]
        e.installed_distributions = cache[dist]["distributions"]


def ratios(entries) -> None:
    """Attach value / cnnrt's value for every figure (medians)."""
    base = entries[0]

    def med(e, key, n=None):
        s = e.throughput.get(n) if key == "throughput" else getattr(e, key)
        return summarize(s)["median"] if s else None

    for e in entries:
        r = {}
        for n in e.throughput:
            r[f"throughput_{n}"] = ratio(med(e, "throughput", n), med(base, "throughput", n))
        for key in ("latency", "import_seconds", "first_call_seconds", "peak_rss_bytes"):
            r[key] = ratio(med(e, key), med(base, key))
        r["installed_bytes"] = ratio(e.installed_bytes, base.installed_bytes)
        e.ratios = r
