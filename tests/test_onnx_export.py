"""cnnrt.exporters.onnx: any graph as ONNX, run by ONNX Runtime, against the float64 reference; and
`cnnrt bench` on a graph that is no layer chain (cnnrt and ONNX Runtime run it, chain-only peers
say why they skip)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnrt.ir.graph import Graph, Node, run_reference
from cnnrt.testing import cpu_graphs as graphs
from cnnrt.testing.cpu_graphs import Builder

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
ROOT = Path(__file__).resolve().parent.parent


def run_ort(g, feeds):
    from cnnrt.exporters.onnx import to_onnx

    m = to_onnx(g)
    import onnx

    onnx.checker.check_model(m, full_check=True)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def agree(g, rng, n=3, tol=1e-5):
    x = rng.standard_normal((n, *g.input_shape)).astype(np.float32)
    ref = run_reference(g, {g.input_name: x.astype(np.float64)}, np.float64)
    got = run_ort(g, {g.input_name: x})
    for t in g.outputs:
        assert got[t].shape == ref[t].shape, t
        np.testing.assert_allclose(got[t], ref[t], rtol=0, atol=tol * np.abs(ref[t]).max())


@pytest.mark.parametrize("name,size", [("resnet20", None), ("mobilenet_v2_96", 32), ("resnet18", 32)])
def test_zoo_graphs(rng, name, size):
    agree(graphs.build(name, seed=int(rng.integers(1 << 30)), **({"size": size} if size else {})), rng, n=2, tol=1e-4)


def test_spatial_ops_and_layouts(rng):
    """Convolutions of every kind, pools, BatchNorm (4-D and 2-D), constants broadcast over NCHW
    tensors, a flatten of a spatial map (NHWC order), concat on channels, reshape and transpose."""
    b = Builder((9, 8, 5), seed=int(rng.integers(1 << 30)), batch_norm=False)
    a = b.conv("images", 6, 3, stride=2, pad=(0, 1, 2, 1), act="hardswish")
    c = b.conv("images", 6, 5, dilation=2, pad=(4, 4, 4, 4), group=1)
    c = b.maxpool(c, 3, 2, (1, 0, 1, 1), ceil=1)
    c = b.conv(c, 6, 3, group=6, act="relu6")
    bn = b.bn(c)
    s = b._add("Mul", [bn, b.param("s", rng.standard_normal(6))], out_shape=b.shapes[c])
    s = b._add("Add", [s, b.param("t", rng.standard_normal((1, 1, 1, 6)))], out_shape=b.shapes[c])
    s = b.avgpool(s, 2, 1, (0, 0, 1, 1), count_include_pad=1)
    s = b.add(s, a, act="leaky")
    cat = b._add("Concat", [s, a], {"axis": -1}, out_shape=b.shapes[s][:3] + (12,))
    tr = b._add("Transpose", [cat], {"perm": (0, 2, 1, 3)}, out_shape=(1, 4, 5, 12))
    f = b._add("Flatten", [tr], {"axis": 1}, out_shape=(1, 240))
    d = b.dense(f, 8, act="sigmoid")
    d2 = b._add("BatchNormalization", [d] + [b.param(f"bn2.{k}", v) for k, v in (
        ("s", rng.uniform(0.5, 1.5, 8)), ("b", rng.standard_normal(8)), ("m", rng.standard_normal(8)),
        ("v", rng.uniform(0.5, 1.5, 8)))], {"epsilon": 1e-3}, out_shape=(1, 8))
    r = b._add("Reshape", [d2], {"shape": (0, 2, 4)}, out_shape=(1, 2, 4))
    sm = b._add("Softmax", [r], {"axis": -1}, out_shape=(1, 2, 4))
    gp = b._add("GlobalMaxPool", [cat], out_shape=(1, 1, 1, 12))
    g = b.graph(sm, "layouts")
    g.outputs.append(gp)
    g.validate()
    agree(g, rng)


def test_elementwise_and_shape_ops(rng):
    nodes = [
        Node("Gelu", "g1", ["x"], ["a"]),
        Node("Gelu", "g2", ["x"], ["b"], {"approximate": "tanh"}),
        Node("Add", "ab", ["a", "b"], ["b2"]),
        Node("Sub", "s", ["a", "x"], ["c"]),
        Node("Pad", "p", ["c"], ["d"], {"pads": (0, 1, 0, 0, 2, 1)}),
        Node("Slice", "sl", ["d"], ["e"], {"starts": (1,), "ends": (5,), "axes": (-1,)}),
        Node("Unsqueeze", "u", ["e"], ["f"], {"axes": (1,)}),
        Node("Squeeze", "q", ["f"], ["h"], {"axes": (1,)}),
        Node("ReduceMean", "rm", ["h"], ["i"], {"axes": (2,), "keepdims": 1}),
        Node("ReduceSum", "rs", ["h"], ["j"], {"axes": (1,), "keepdims": 0}),
        Node("Split", "sp", ["h"], ["k1", "k2"], {"axis": 2, "split": (1, 3)}),
        Node("Mul", "m", ["k2", "i"], ["l"]),
        Node("LogSoftmax", "ls", ["l"], ["y"], {"axis": 1}),
        Node("Tanh", "t", ["j"], ["z"]),
    ]
    g = Graph(nodes, {"x": (1, 5, 4)}, ["y", "z", "k1", "b2"])
    agree(g, rng)


def test_cli_bench_runs_any_graph(tmp_path, monkeypatch, capsys):
    """`cnnrt bench` on a residual net with mean/std preprocessing: cnnrt and ONNX Runtime measured and
    agreeing, a chain-only peer skipped with its reason, random images of the model's shape."""
    from cnnrt.bench import system
    from cnnrt.cli import main
    from cnnrt.formats import save_bundle

    rate = system.matmul_rate
    monkeypatch.setattr(system, "matmul_rate", lambda n=2048, repeats=5: rate(64, 2))  # (the floor: not tested here)
    g = graphs.resnet20(seed=3)
    path = tmp_path / "resnet20.safetensors"
    save_bundle(g, path)
    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", str(path), "--images", "random", "--sizes", "6", "--rounds", "1",
               "--batch-size", "3", "--latency-calls", "1", "--no-cold", "--peers", "onnxruntime,tf-function",
               "--quiet", "--json-out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    by = {e["name"]: e for e in res["runtimes"]}
    assert by["cnnrt"]["skipped"] is None and by["onnxruntime"]["skipped"] is None
    assert by["onnxruntime"]["agreement"] == 1.0
    assert by["onnxruntime"]["max_abs_diff"] < 1e-3
    assert "layer chain" in by["tf-function"]["skipped"] and "GlobalAveragePool" in by["tf-function"]["skipped"]
    assert any("random uint8 images of shape (32, 32, 3)" in n for n in res["notes"])
    assert "resnet20" in capsys.readouterr().out


def test_cli_bench_says_which_images_fit(tmp_path):
    from cnnrt.formats import save_bundle

    path = tmp_path / "r.safetensors"
    save_bundle(graphs.resnet20(seed=1), path)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-m", "cnnrt", "bench", "--model", str(path), "--sizes", "5", "--quiet",
                        "--peers", "none", "--no-cold"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert "do not fit the model's input (32, 32, 3)" in p.stderr and "--images random" in p.stderr
    assert "Traceback" not in p.stderr
