"""The measured choice of engine for a layer chain in fp32 (cnnrt/backends/chain_engine.py): the
first prepare on a machine times both engines and caches the answer; later ones read it; the
environment overrides it; both engines give the float64 reference's answer."""
import json

import numpy as np
import pytest

from cnnrt.backends import chain_engine, numpy_backend
from cnnrt.backends.chain_engine import ByBatch
from cnnrt.backends.numpy_backend import NumpyRunner
from cnnrt.backends.numpy_graph import GraphRunner
from cnnrt.errors import CnnrtError
from cnnrt.ir.graph import run_reference
from cnnrt.testing import cpu_graphs


@pytest.fixture
def graph(monkeypatch, tmp_path):
    if not numpy_backend._compiled():
        pytest.skip("no compiled kernels here: layer chains always run on the staged engine")
    monkeypatch.setenv("CNNRT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CNNRT_STAGED", raising=False)
    monkeypatch.setattr(chain_engine, "IMAGES", 32)
    return cpu_graphs.deep_mnist(seed=3)


def test_measured_once_then_read_from_the_cache(graph, monkeypatch, tmp_path):
    monkeypatch.setenv("CNNRT_CHAIN_ENGINE", "auto")
    calls = []
    real = chain_engine.measure
    monkeypatch.setattr(chain_engine, "measure", lambda *a: calls.append(1) or real(*a))
    r = numpy_backend.prepare(graph, "fp32", threads=2)
    assert len(calls) == 1 and "measured now" in r.engine_choice
    files = list(tmp_path.glob("chain-engine-*.json"))
    assert len(files) == 1
    rec = json.loads(files[0].read_text())
    t = rec["seconds"]  # the faster of the two, for batches and for one image
    assert rec["engine"] == min(("graph", "staged"), key=lambda e: t[e])
    assert rec["single"] == min(("graph", "staged"), key=lambda e: t[e + "_one"])
    kind = {"graph": GraphRunner, "staged": NumpyRunner}
    if rec["engine"] == rec["single"]:
        assert isinstance(r, kind[rec["engine"]])
    else:
        assert isinstance(r, ByBatch) and isinstance(r.large, kind[rec["engine"]]) and isinstance(r.single, kind[rec["single"]])
    r.close()
    r2 = numpy_backend.prepare(graph, "fp32", threads=2)
    assert len(calls) == 1 and "cached in" in r2.engine_choice and type(r2) is type(r)
    r2.close()
    # another thread count is another question
    numpy_backend.prepare(graph, "fp32", threads=1).close()
    assert len(calls) == 2 and len(list(tmp_path.glob("chain-engine-*.json"))) == 2


def test_a_broken_cache_file_is_measured_again(graph, monkeypatch, tmp_path):
    monkeypatch.setenv("CNNRT_CHAIN_ENGINE", "auto")
    numpy_backend.prepare(graph, "fp32", threads=2).close()
    (f,) = tmp_path.glob("chain-engine-*.json")
    f.write_text("{not json")
    r = numpy_backend.prepare(graph, "fp32", threads=2)
    assert "measured now" in r.engine_choice and json.loads(f.read_text())["engine"] in ("graph", "staged")
    r.close()


@pytest.mark.parametrize("env,kind", [("graph", GraphRunner), ("staged", NumpyRunner)])
def test_the_environment_decides_and_both_engines_are_right(graph, monkeypatch, rng, env, kind):
    monkeypatch.setenv("CNNRT_CHAIN_ENGINE", env)
    monkeypatch.setattr(chain_engine, "measure", lambda *a: pytest.fail("measured though set"))
    r = numpy_backend.prepare(graph, "fp32", threads=2)
    assert isinstance(r, kind) and "environment" in r.engine_choice
    x = rng.standard_normal((5, *graph.input_shape)).astype(np.float32)
    ref = run_reference(graph, {graph.input_name: x.astype(np.float64)}, np.float64)[graph.outputs[0]]
    got = r.probabilities(x)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
    r.close()


def test_a_bad_setting_is_an_error(graph, monkeypatch):
    monkeypatch.setenv("CNNRT_CHAIN_ENGINE", "fastest")
    with pytest.raises(CnnrtError, match="CNNRT_CHAIN_ENGINE must be auto, graph or staged"):
        numpy_backend.prepare(graph, "fp32", threads=2)


def test_two_engines_split_by_batch_size(graph, monkeypatch, rng):
    """Where one engine is faster for batches and the other for single images, batches of up to
    SMALL images go to the one-image choice and larger ones to the other: each gives the float64
    reference's answer and says the chunk it ran."""
    monkeypatch.setenv("CNNRT_CHAIN_ENGINE", "auto")
    monkeypatch.setattr(chain_engine, "measure",
                        lambda *a: {"graph": 2.0, "staged": 1.0, "graph_one": 1e-3, "staged_one": 2e-3})
    r = numpy_backend.prepare(graph, "fp32", threads=2)
    assert isinstance(r, ByBatch) and isinstance(r.single, GraphRunner) and isinstance(r.large, NumpyRunner)
    assert "smaller ones on the planner" in r.engine_choice and r.precision == "fp32"
    calls = []

    def spy(part):
        real = part.probabilities
        return lambda *a, **k: calls.append(part) or real(*a, **k)

    for part in (r.single, r.large):
        monkeypatch.setattr(part, "probabilities", spy(part))
    for n, want in ((3, r.single), (chain_engine.SMALL, r.single), (chain_engine.SMALL + 5, r.large)):
        x = rng.standard_normal((n, *graph.input_shape)).astype(np.float32)
        ref = run_reference(graph, {graph.input_name: x.astype(np.float64)}, np.float64)[graph.outputs[0]]
        got = r.probabilities(x)
        assert calls[-1] is want and r.batch_size_used == want.batch_size_used
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
        assert (r.predict(x) == ref.argmax(axis=1)).all()
    r.close()


@pytest.mark.parametrize("env,name", [("graph", "the planner"), ("staged", "the staged engine")])
def test_eval_says_which_engine_ran(env, name):
    """`cnnrt eval` names the engine that ran the layer chain (text and JSON) and how it was chosen."""
    from cli_helpers import cnnrt

    if not numpy_backend._compiled():
        pytest.skip("no compiled kernels here: layer chains always run on the staged engine")
    p = cnnrt("eval", "--limit", "300", "--backend", "numpy", env={"CNNRT_CHAIN_ENGINE": env})
    assert f"Engine: {name} (set by the environment;" in p.stdout
    p = cnnrt("eval", "--limit", "300", "--backend", "numpy", "--json", env={"CNNRT_CHAIN_ENGINE": env})
    r = json.loads(p.stdout)
    assert r["engine"].startswith(name) and r["accuracy"] > 0.95
    p = cnnrt("eval", "--limit", "30", "--backend", "numpy", "--precision", "fp16", env={"CNNRT_CHAIN_ENGINE": env})
    assert "Engine:" not in p.stdout  # fp16: the staged engine, no choice made
