"""One regular test per reader bug that tests/test_fuzz_readers.py found: each input below once
gave a traceback (another exception than FormatError) or allocated far more than the file holds.
Each must now be a FormatError naming the file and what was expected, within a small allocation."""
from __future__ import annotations

import gzip
import io
import json
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from cnnrt.errors import FormatError

MB = 1 << 20


def refused(call, *fragments, peak_mb: float = 32):
    """call() raises FormatError containing every fragment, and traces less than peak_mb at its peak."""
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as e:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for f in fragments:
        assert f in str(e.value), f"{f!r} not in {str(e.value)!r}"
    assert peak < peak_mb * MB, f"{peak / MB:.0f} MB allocated"
    return str(e.value)


# ---------------------------------------------------------------------------------------- IDX

def test_idx_damaged_deflate_stream(tmp_path):
    """zlib.error (not an OSError) escaped from the gzip reader."""
    from cnnrt.idx import read_idx

    raw = struct.pack(">HBBI", 0, 8, 1, 16) + bytes(range(16))
    gz = bytearray(gzip.compress(raw))
    gz[10] = 0x00  # the first deflate block becomes a stored block whose LEN/NLEN do not match
    p = tmp_path / "bad.idx.gz"
    p.write_bytes(bytes(gz))
    with pytest.raises(zlib.error):
        gzip.decompress(bytes(gz))  # the damage this test means
    refused(lambda: read_idx(p), str(p), "corrupt or truncated compressed data")


def test_idx_empty_array_of_impossible_shape(tmp_path):
    """A zero dimension beside huge ones: 0 data bytes, so the size check passed, then NumPy's
    reshape raised ValueError ('array is too big')."""
    from cnnrt.idx import read_idx

    dims = (0, 2**31 - 1, 2**31 - 1, 2**31 - 1)
    p = tmp_path / "bad.idx"
    p.write_bytes(struct.pack(">HBB4I", 0, 8, 4, *dims))
    refused(lambda: read_idx(p), str(p), "not a plausible IDX header", "0x2147483647x2147483647x2147483647")


# ---------------------------------------------------------------------------------------- bundles

def _bundle(tmp_path, description: str | dict, tensors=None):
    from safetensors.numpy import save_file

    p = tmp_path / "bad.safetensors"
    raw = description if isinstance(description, str) else json.dumps(description)
    save_file(tensors if tensors is not None else {"w": np.zeros(2, np.float32)}, str(p), metadata={"cnnrt": raw})
    return p


def test_bundle_description_nested_past_the_recursion_limit(tmp_path):
    """json.loads raised RecursionError."""
    from cnnrt.formats import load_model

    p = _bundle(tmp_path, "[" * 100_000 + "]" * 100_000)
    refused(lambda: load_model(p), str(p), "nested more than 64 levels deep")
    p = _bundle(tmp_path, '{"version": 2, "graph": ' + "[" * 500 + "]" * 500 + "}")  # parses, then too deep
    refused(lambda: load_model(p), str(p), "nested more than 64 levels deep")


def _graph_bundle(tmp_path, edit):
    """A version-2 bundle of a small graph, its description edited by edit(desc)."""
    from cnnrt.formats import BUNDLE_VERSION
    from cnnrt.ir import serialize
    from cnnrt.testing import graphs

    g = graphs.with_host_op(1)
    desc = {"format": "cnnrt", "version": BUNDLE_VERSION, "name": g.name, **serialize.to_json(g), "meta": g.meta}
    desc = json.loads(json.dumps(desc))
    edit(desc)
    return _bundle(tmp_path, desc, dict(g.params))


def _node(desc, op):
    return next(n for n in desc["graph"]["nodes"] if n["op"] == op)


@pytest.mark.parametrize("what,edit,fragments", [
    ("group inf", lambda d: _node(d, "Conv")["attrs"].__setitem__("group", "inf"),
     ["node 'conv1' (Conv): bad attributes", "OverflowError"]),
    ("reshape 1e30", lambda d: _node(d, "Reshape")["attrs"].__setitem__("shape", [0, 10**30, 4]),
     ["(Reshape): bad attributes", "OverflowError"]),
    ("input 1e30", lambda d: d["graph"]["inputs"][0].__setitem__("shape", [1, 10**30, 6, 2]),
     ["input 'images' has shape (1, 1000000000000000000000000000000, 6, 2), too large for any tensor"]),
    ("input wraps int64", lambda d: d["graph"]["inputs"][0].__setitem__("shape", [1, 2**40, 2**40, 2]),
     ["too large for any tensor"]),  # its element count wrapped around to 0 in int64: "cannot reshape (0 values)"
], ids=lambda v: v if isinstance(v, str) else "")
def test_bundle_graph_values_that_overflowed(tmp_path, what, edit, fragments):
    """OverflowError escaped from shape inference (int(inf), NumPy's int64 products)."""
    from cnnrt.formats import load_model

    p = _graph_bundle(tmp_path, edit)
    refused(lambda: load_model(p), str(p), *fragments)


@pytest.mark.parametrize("op", ["MatMul", "Slice"])
def test_shape_inference_allocates_nothing_of_the_declared_size(op):
    """MatMul's and Slice's shape rules built an int8 array of the input's declared shape: a batch of
    2**31 in a file of a few KB meant 288 GB (MemoryError) or, smaller, a real allocation."""
    from cnnrt.ir.graph import Graph, Node

    n = 2**31 - 1
    if op == "MatMul":
        node, params, want = Node("MatMul", "mm", ["x", "w"], ["y"]), {"w": np.ones((36, 5), np.float32)}, (n, 4, 5)
    else:
        node = Node("Slice", "s", ["x"], ["y"], {"starts": (1,), "ends": (3,), "axes": (2,)})
        params, want = {}, (n, 4, 2)
    tracemalloc.start()
    try:
        g = Graph([node], {"x": (n, 4, 36)}, ["y"], params)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert g.shapes["y"] == want and peak < 4 * MB


def test_matmul_shape_rule_agrees_with_numpy():
    """The shape rule written out for MatMul against numpy.matmul on small arrays, every pairing."""
    import itertools

    from cnnrt.ir.ops import OpError, matmul_shape

    shapes = [(), (3,), (4,), (3, 4), (4, 3), (2, 3, 4), (1, 4, 5), (2, 1, 4, 3), (5, 4, 2), (1, 3), (4, 1),
              (3, 2, 4, 4)]
    for a, b in itertools.product(shapes, repeat=2):
        try:
            want = np.matmul(np.zeros(a) if a else 0.0, np.zeros(b) if b else 0.0).shape
        except ValueError:
            want = None
        try:
            got = matmul_shape(a, b)
        except OpError:
            got = None
        assert got == want, (a, b)


# ---------------------------------------------------------------------------------------- images

def _png(h=1, w=1) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((h, w), 95, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_png_chunk_claiming_more_than_the_file(tmp_path):
    """Pillow skips the rest of an image-data chunk with one read of its claimed length: a 67-byte
    file whose IDAT claimed 352 MB allocated 336 MB."""
    pytest.importorskip("PIL")
    from cnnrt.images import read_pictures

    data = bytearray(_png())
    i = data.index(b"IDAT") - 4
    data[i:i + 4] = struct.pack(">I", 352321546)
    p = tmp_path / "bad.png"
    p.write_bytes(bytes(data))
    refused(lambda: read_pictures(p), str(p), "damaged or truncated image", "PNG 'IDAT' chunk",
            "claims 352321546 bytes")
    good = tmp_path / "good.png"
    good.write_bytes(_png(5, 7) + b"trailing bytes after IEND are ignored")
    assert read_pictures(good)[0].pixels.shape == (5, 7, 1)


def test_header_length_pillow_trusts_beyond_the_file(tmp_path):
    """Identifying a file, Pillow's GBR plugin reads a header whose length the file's first four
    bytes claim: a 1,067-byte .bmp whose bytes start b'B\\0\\0\\1' (1.1 GB) allocated 1,056 MB
    (found by test_fuzz_images in CI)."""
    pytest.importorskip("PIL")
    from cnnrt.images import read_pictures

    head = (b"B\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x01\x00\x08\x00\x00\x00\x00\x00\x04\x00\x00\x00"
            b"\xc4\x0e\x00\x00\xc4\x0e\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00")
    p = tmp_path / "img.bmp"
    p.write_bytes(head + bytes(1067 - len(head)))
    refused(lambda: read_pictures(p), str(p), "damaged or truncated image")


def _npy_header(version: tuple, text: bytes, length: int | None = None) -> bytes:
    fmt = "<H" if version == (1, 0) else "<I"
    return b"\x93NUMPY" + bytes(version) + struct.pack(fmt, len(text) if length is None else length) + text


def test_npy_header_length_beyond_the_file(tmp_path):
    """Version 0.0 was read as 2.0, whose 4-byte header length NumPy reads in one go: 662 MB for a
    file of 144 bytes."""
    from cnnrt.images import read_pictures

    text = b"{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2), }    \n"
    p = tmp_path / "bad.npy"
    p.write_bytes(_npy_header((0, 0), text) + bytes(4))
    refused(lambda: read_pictures(p), str(p), "not a readable .npy array (unknown format version 0.0")
    p.write_bytes(_npy_header((2, 0), text, length=662372470) + bytes(4))
    refused(lambda: read_pictures(p), str(p), "its header claims 662372470 bytes")
    p.write_bytes(b"\x93NUMPY\x01\x00\x05")
    refused(lambda: read_pictures(p), str(p), "not a readable .npy array (truncated: it ends inside its header)")


@pytest.mark.parametrize("shape", ["(0, 1099511627776, 1099511627776)", "(-1, 4)"])
def test_npy_impossible_shape(tmp_path, shape):
    """Hardening, not a traceback: these were refused before too, but only after NumPy multiplied the
    shape in int64 (a RuntimeWarning and a wrapped-around element count) or took -1 for 'all'."""
    from cnnrt.images import read_pictures

    text = ("{'descr': '|u1', 'fortran_order': False, 'shape': " + shape + ", }").encode()
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    p = tmp_path / "bad.npy"
    p.write_bytes(_npy_header((1, 0), text) + bytes(8))
    refused(lambda: read_pictures(p), str(p), "damaged header", "describes no array that could exist")


# ---------------------------------------------------------------------------------------- ONNX

def _onnx_model(hidden_dims=(1, 8, 8)):
    """x (N, 1, 8, 8) -> Conv -> Relu -> Dropout (with mask) -> Flatten -> Gemm -> y (N, 10)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    r = np.random.default_rng(0)
    inits = [numpy_helper.from_array(r.standard_normal((2, 1, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(r.standard_normal((10, 2 * 6 * 6)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r0"]),
             helper.make_node("Dropout", ["r0"], ["r", "mask"], ratio=0.5),
             helper.make_node("Flatten", ["r"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *hidden_dims])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    m.ir_version = 6
    return onnx, m


def _save(tmp_path, m):
    p = tmp_path / "bad.onnx"
    p.write_bytes(m.SerializeToString())
    return p


def test_onnx_model_loads_as_written(tmp_path):
    """The model the ONNX cases below damage is a valid one."""
    from cnnrt.formats import load_model

    _, m = _onnx_model()
    assert load_model(_save(tmp_path, m)).num_classes == 10


def test_onnx_name_not_utf8(tmp_path):
    """Protobuf hands a string field of invalid UTF-8 back as bytes: a node on constants (folded at
    import through onnx.reference) with such an op type gave UnicodeDecodeError from onnx.helper."""
    from cnnrt.formats import load_model

    onnx, m = _onnx_model()
    m.graph.node.insert(0, onnx.helper.make_node("Relu", ["w2"], ["w2r"]))  # constant: folded
    m.graph.node[-1].input[1] = "w2r"
    data = m.SerializeToString().replace(b"Relu", b"\x80elu")
    p = tmp_path / "bad.onnx"
    p.write_bytes(data)
    refused(lambda: load_model(p), str(p), "the op type name b'\\x80elu' is not valid UTF-8 text")


def test_onnx_string_attribute_not_utf8(tmp_path):
    from cnnrt.formats import load_model

    onnx, m = _onnx_model()
    m.graph.node[0].attribute.append(onnx.helper.make_attribute("auto_pad", b"NOTSE\xff"))
    refused(lambda: load_model(_save(tmp_path, m)), "attribute 'auto_pad' cannot be read", "UnicodeDecodeError")


def test_onnx_unknown_element_type(tmp_path):
    """TensorProto.DataType.Name raised ValueError for a code no ONNX version defines."""
    from cnnrt.formats import load_model

    _, m = _onnx_model()
    m.graph.input[0].type.tensor_type.elem_type = 29
    p = _save(tmp_path, m)
    refused(lambda: load_model(p), str(p), "input 'x' has element type unknown type 29")


def test_onnx_declared_shape_is_not_allocated(tmp_path):
    """Dropout's mask (np.ones) and Flatten's row permutation (np.arange) were made at the input's
    declared size: a few-KB file with a declared 2**20 x 2**20 image allocated gigabytes."""
    from cnnrt.formats import load_model

    _, m = _onnx_model(hidden_dims=(1, 2**20, 2**20))
    p = _save(tmp_path, m)
    refused(lambda: load_model(p), str(p), "weights of shape (10, 72) do not fit an input of", peak_mb=16)


def test_onnx_concat_of_mixed_ranks(tmp_path):
    """An internal assertion (AssertionError) fired for a Concat of a 4-D tensor and a 1-D constant."""
    from cnnrt.formats import load_model

    onnx, m = _onnx_model()
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "k"))
    m.graph.node.insert(2, onnx.helper.make_node("Concat", ["r0", "k"], ["cat"], axis=1))
    m.graph.node[3].input[0] = "cat"
    refused(lambda: load_model(_save(tmp_path, m)), "inputs of ranks [4, 1] cannot be concatenated")


def test_onnx_attribute_out_of_range(tmp_path):
    """int() of a float attribute set to infinity (Gemm's transA) raised OverflowError."""
    from cnnrt.formats import load_model

    onnx, m = _onnx_model()
    m.graph.node[-1].attribute.append(onnx.helper.make_attribute("transA", float("inf")))
    p = _save(tmp_path, m)
    refused(lambda: load_model(p), str(p), "(Gemm): malformed node or attributes", "OverflowError")
