"""`cnnrt bench`: statistics, the harness with fake peers (missing, broken, disagreeing), reports,
the document update and the command line. No timing assertions: durations are faked where a test
needs to know them."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cnnrt.bench import harness, report, system
from cnnrt.bench.stats import quantile, ratio, summarize
from cnnrt.errors import CnnrtError
from cnnrt.peers import Peer


# ---------------------------------------------------------------- statistics

def test_summarize_odd_count_with_an_outlier():
    s = summarize([3, 1, 100, 2, 4])
    assert (s["n"], s["median"], s["min"], s["max"]) == (5, 3, 1, 100)
    assert (s["q1"], s["q3"], s["iqr"]) == (2, 4, 2)
    assert s["spread"] == pytest.approx(99 / 3)


def test_summarize_even_count_interpolates_like_numpy():
    vals = [4.0, 1.0, 3.0, 2.0]
    s = summarize(vals)
    assert s["median"] == 2.5
    assert s["q1"] == pytest.approx(1.75) and s["q3"] == pytest.approx(3.25)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert quantile(sorted(vals), q) == pytest.approx(np.percentile(vals, 100 * q))


def test_summarize_single_sample():
    s = summarize([0.5])
    assert s["median"] == s["min"] == s["max"] == s["q1"] == s["q3"] == 0.5 and s["spread"] == 0


@pytest.mark.parametrize("bad", [[], [1.0, math.nan], [math.inf]])
def test_summarize_refuses_empty_or_non_finite(bad):
    with pytest.raises(ValueError):
        summarize(bad)


def test_ratio():
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None and ratio(1.0, 0) is None


# ---------------------------------------------------------------- the harness with fake peers

CLASSES = 3


class FakePeer(Peer):
    """Probabilities from the image sum; `seconds` is what the faked clock says one image costs."""

    modules = ()
    distributions = ()

    def __init__(self, name, seconds_per_image=0.001, flip=False):
        self.name, self.label, self.spi, self.flip = name, f"fake {name}", seconds_per_image, flip
        self.calls = []

    def version(self):
        return "fake 1.0"

    def prepare(self, model):
        def infer(x, bs):
            self.calls.append((len(x), bs))
            cls = (x.reshape(len(x), -1).sum(1).astype(int)) % CLASSES
            if self.flip:
                cls[::2] = (cls[::2] + 1) % CLASSES
            out = np.full((len(x), CLASSES), 0.1, np.float32)
            out[np.arange(len(x)), cls] = 0.8
            return out
        infer.peer = self
        return infer


class MissingPeer(FakePeer):
    modules = ("cnnrt_no_such_package_for_tests",)
    install_hint = "pip install nothing"


class BrokenPeer(FakePeer):
    def prepare(self, model):
        raise RuntimeError("cannot build this model")


class FailsLaterPeer(FakePeer):
    def prepare(self, model):
        inner = super().prepare(model)

        def infer(x, bs):
            if len(x) == 4:  # fine in warm-up (8 images, and 1), fails in the timed rounds
                raise RuntimeError("out of memory")
            return inner(x, bs)
        return infer


@pytest.fixture
def fake_clock(monkeypatch):
    """harness._timed returns len(x) * the peer's seconds-per-image, + 1 s per batch beyond the first."""

    def timed(fn, *args):
        out = fn(*args)
        if len(args) != 2:  # peer.prepare(model)
            return 0.0, out
        x, bs = args
        peer = getattr(fn, "peer", None)
        spi = peer.spi if peer else 0.0
        batches = -(-len(x) // bs)
        return len(x) * spi + (batches - 1) * 1.0 * spi, out

    monkeypatch.setattr(harness, "_timed", timed)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 5, size=(8, 2, 2, 1)).astype(np.float32)


OPTS = dict(sizes=(4, 8), rounds=3, batch_sizes=(2, 8), calibration_images=6, latency_calls=2, cold_rounds=0, pause=0)


def test_run_skips_a_missing_peer_and_a_broken_one_and_goes_on(images, fake_clock):
    base, fast = FakePeer("base", 0.002), FakePeer("fast", 0.001)
    logs = []
    entries = harness.run(None, images, [base, MissingPeer("missing"), BrokenPeer("broken"), fast],
                          harness.Options(**OPTS), log=logs.append)
    by = {e.name: e for e in entries}
    assert by["missing"].skipped == "cnnrt_no_such_package_for_tests is not installed (pip install nothing)"
    assert by["broken"].skipped == "failed to build: RuntimeError: cannot build this model"
    assert any("skip missing" in line for line in logs) and any("skip broken" in line for line in logs)
    assert not by["missing"].throughput and not by["broken"].throughput
    for e in (by["base"], by["fast"]):
        assert e.skipped is None and e.version == "fake 1.0"
        assert {n: len(s) for n, s in e.throughput.items()} == {4: 3, 8: 3}
        assert len(e.latency) == 3 * 2
        assert e.batch_size == 8  # one batch beats several under the fake clock
        assert set(e.calibration) == {2, 8}
    # figures against the baseline (the first peer)
    harness.ratios(entries)
    assert by["fast"].ratios["throughput_8"] == pytest.approx(0.5)
    assert by["fast"].ratios["latency"] == pytest.approx(0.5)
    assert by["base"].ratios["throughput_4"] == 1.0
    assert by["fast"].agreement == 1.0 and by["fast"].max_abs_diff == 0.0


def test_run_measures_agreement_with_the_baseline(images, fake_clock):
    entries = harness.run(None, images, [FakePeer("base"), FakePeer("flip", flip=True)], harness.Options(**OPTS),
                          log=lambda m: None)
    flip = entries[1]
    assert flip.agreement == 0.5  # every other image's class moved
    assert flip.max_abs_diff == pytest.approx(0.7)


def test_a_peer_failing_mid_run_is_dropped_with_a_note(images, fake_clock):
    entries = harness.run(None, images, [FakePeer("base"), FailsLaterPeer("flaky")], harness.Options(**OPTS),
                          log=lambda m: None)
    assert entries[1].skipped == "failed in round 1: RuntimeError: out of memory"
    assert len(entries[0].throughput[8]) == 3  # the others finish all rounds


def test_rounds_alternate_between_runtimes(images, fake_clock):
    order = []

    class Recording(FakePeer):
        def prepare(self, model):
            inner = super().prepare(model)

            def infer(x, bs):
                if len(x) == 8:
                    order.append(self.name)
                return inner(x, bs)
            return infer

    opts = harness.Options(**{**OPTS, "sizes": (8,), "batch_sizes": (2,), "calibration_images": 4})
    harness.run(None, images, [Recording("a"), Recording("b"), Recording("c")], opts, log=lambda m: None)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


@pytest.mark.parametrize("change, message", [
    ({"sizes": (100,)}, "asked for 100 images but the image file holds 8"),
    ({"rounds": 0}, "--rounds must be at least 1"),
    ({"batch_sizes": (0,)}, "batch sizes must be positive"),
])
def test_bad_options_are_clear_errors(images, change, message):
    with pytest.raises(CnnrtError, match=message):
        harness.run(None, images, [FakePeer("base")], harness.Options(**{**OPTS, **change}), log=lambda m: None)


# ---------------------------------------------------------------- reports

def _results(images):
    import time as _t  # noqa: F401

    entries = harness.run(None, images, [FakePeer("cnnrt", 0.002), MissingPeer("missing"), FakePeer("fast", 0.001)],
                          harness.Options(**OPTS), log=lambda m: None)
    entries[0].installed_bytes, entries[2].installed_bytes = 10_000_000, 40_000_000
    entries[0].import_seconds, entries[2].import_seconds = [0.1, 0.2, 0.3], [1.0, 2.0, 3.0]
    harness.ratios(entries)
    meta = {
        "command": "cnnrt bench --test", "date": "2026-11-27 16:00 UTC",
        "machine": {"cpu": "Test CPU", "cores": 2, "system": "Linux", "python": "3.11", "numpy": "2"},
        "model": {"path": "m.safetensors", "name": "m", "flops_per_image": 1_000_000, "parameters": 10},
        "images": {"path": "i.gz", "count": 8},
        "options": {"sizes": [4, 8], "rounds": 3, "latency_calls": 2, "cold_rounds": 3, "batch_sizes": [2, 8]},
        "matmul": {"n": 64, "repeats": 5, "flops_per_second": 1e9},
        "floor_seconds": {"4": 0.004, "8": 0.008}, "other_load": None,
    }
    return json.loads(json.dumps(report.results_dict(meta, entries)))  # what --json-out writes and reads


def test_reports_show_ratios_floor_and_skipped_peers(images, fake_clock):
    res = _results(images)
    txt = report.text(res)
    assert "fake fast" in txt and "0.50x" in txt  # half of cnnrt's time
    assert "10.00x" in txt  # import 2.0 s against 0.2 s
    assert "4.00x" in txt  # 40 MB against 10 MB
    assert "note: fake missing (missing): skipped: cnnrt_no_such_package_for_tests is not installed" in txt
    assert "8 images >= 0.008 s" in txt
    md = report.markdown(res, chart="bench.png")
    assert "| fake fast |" in md and "![cnnrt bench chart](bench.png)" in md and "cnnrt bench --test" in md
    fast = [e for e in res["runtimes"] if e["name"] == "fast"][0]
    assert fast["throughput"]["8"]["median"] == pytest.approx(0.008)
    assert fast["import_seconds"]["median"] == 2.0 and fast["import_seconds"]["samples"] == [1.0, 2.0, 3.0]


def test_chart_is_a_png(images, fake_clock, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "sub" / "chart.png"
    report.chart(_results(images), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


DOC = """# Benchmarks

<!-- section: eval (issue 2) -->
keep me
<!-- end: eval -->

<!-- section: cpu-bench (issue 4, cnnrt bench) -->
## `cnnrt bench` on the CPU: cnnrt against the frameworks

(to be filled by `cnnrt bench`)
<!-- end: cpu-bench -->

<!-- section: gpu (issue 3) -->
keep me too
<!-- end: gpu -->
"""


def test_update_doc_replaces_only_its_section(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC)
    report.update_doc(doc, "NEW TABLE\n")
    out = doc.read_text()
    assert "(to be filled" not in out and "NEW TABLE\n<!-- end: cpu-bench -->" in out
    assert "## `cnnrt bench` on the CPU: cnnrt against the frameworks\n\nNEW TABLE" in out
    assert "keep me\n" in out and "keep me too" in out
    report.update_doc(doc, "AGAIN\n")  # idempotent: a second run replaces the first
    assert doc.read_text() == DOC.replace("(to be filled by `cnnrt bench`)\n", "AGAIN\n")


def test_update_doc_without_markers_is_a_clear_error(tmp_path):
    doc = tmp_path / "other.md"
    doc.write_text("# nothing here\n")
    with pytest.raises(CnnrtError, match="no section between"):
        report.update_doc(doc, "x")
    with pytest.raises(CnnrtError, match="cannot read"):
        report.update_doc(tmp_path / "absent.md", "x")


# ---------------------------------------------------------------- the machine

def test_installed_size_counts_dependencies_once_and_notes_missing_ones():
    core = system.installed_size("cnnrt")
    assert core["bytes"] > 0 and core["distributions"] >= 3  # cnnrt, numpy, safetensors
    missing = system.installed_size("cnnrt-no-such-distribution")
    assert missing == {"bytes": 0, "distributions": 0, "not_installed": ["cnnrt-no-such-distribution"]}


def test_matmul_rate_is_positive_and_counts_2n3():
    r = system.matmul_rate(n=32, repeats=2)
    assert r["flops_per_second"] == pytest.approx(2 * 32 ** 3 / r["best_seconds"])


@pytest.fixture
def bundle(tmp_path, random_model):
    from cnnrt.formats import save_bundle

    path = tmp_path / "m.safetensors"
    save_bundle(random_model, path)
    return path


def test_fresh_process_reports_import_and_first_call(bundle):
    out = system.fresh_process("cnnrt", "import cnnrt.backends.numpy_backend", str(bundle), (28, 28, 1))
    assert out["output_shape"] == [1, 10] and out["peak_rss_bytes"] > 1_000_000
    assert 0 < out["import_seconds"] <= out["first_call_seconds"] <= out["process_seconds"]


def test_fresh_process_failure_is_reported(bundle):
    with pytest.raises(RuntimeError, match="fresh process for cnnrt failed"):
        system.fresh_process("cnnrt", "import cnnrt_no_such_module", str(bundle), (28, 28, 1))


# ---------------------------------------------------------------- the command

def test_cli_bench_end_to_end_with_cnnrt_and_a_missing_peer(bundle, tmp_path, monkeypatch, capsys):
    from cnnrt.cli import main
    from cnnrt.peers import onnx_peer

    monkeypatch.setattr(onnx_peer.OnnxRuntime, "modules", ("cnnrt_no_such_package_for_tests",))
    js = tmp_path / "out" / "bench.json"
    rc = main(["bench", "--model", str(bundle), "--sizes", "12,24", "--rounds", "2", "--batch-size", "8,24",
               "--latency-calls", "1", "--no-cold", "--peers", "onnxruntime", "--json", "--json-out", str(js),
               "--quiet"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads(js.read_text())
    cn, ort = res["runtimes"]
    assert cn["name"] == "cnnrt" and cn["skipped"] is None and cn["agreement"] == 1.0
    assert set(cn["throughput"]) == {"12", "24"} and cn["throughput"]["24"]["n"] == 2
    assert cn["batch_size"] in (8, 24) and cn["installed_bytes"] > 0
    assert ort["skipped"].startswith("cnnrt_no_such_package_for_tests is not installed")
    assert res["model"]["flops_per_image"] > 0 and res["floor_seconds"]["24"] > 0
    # the same report again, from the JSON alone
    md = tmp_path / "out" / "bench.md"
    rc = main(["bench", "--from-json", str(js), "--note", "a note from the person who ran it", "--markdown", str(md)])
    out = capsys.readouterr().out
    assert rc == 0 and "skipped: cnnrt_no_such_package_for_tests" in out
    assert "note: a note from the person who ran it" in out and "- a note from the person who ran it" in md.read_text()


@pytest.mark.parametrize("args, message", [
    (["--peers", "nosuch"], "unknown peer 'nosuch'"),
    (["--sizes", "0"], "--sizes: expected positive whole numbers"),
    (["--sizes", "ten"], "--sizes: expected comma-separated whole numbers"),
    (["--sizes", "20000", "--no-cold"], "asked for 20,000 images but"),
    (["--doc", "README-does-not-exist.md"], "cannot read the document"),
])
def test_cli_bench_bad_input(bundle, args, message, capsys):
    from cnnrt.cli import main

    assert main(["bench", "--model", str(bundle), "--quiet", *args]) == 2
    assert message in capsys.readouterr().err


def test_peer_selection():
    from cnnrt.bench.main import select_peers

    assert [p.name for p in select_peers("none")] == ["cnnrt"]
    assert [p.name for p in select_peers("torch, onnxruntime,torch,cnnrt")] == ["cnnrt", "torch", "onnxruntime"]
    assert [p.name for p in select_peers("all")][:2] == ["cnnrt", "keras"]
    with pytest.raises(CnnrtError, match="unknown peer 'tensorflow'"):
        select_peers("tensorflow")


def test_chart_without_matplotlib_fails_before_measuring(bundle, tmp_path, monkeypatch, capsys):
    import sys

    from cnnrt.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc = main(["bench", "--model", str(bundle), "--quiet", "--chart", str(tmp_path / "c.png")])
    assert rc == 2 and "--chart needs matplotlib: pip install 'cnnrt[bench]'" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
