"""cuda_graph.load_sm90a caches its sm_90a cubins on disk: a second load of the same source does not
call NVRTC; an empty (damaged) cache entry is compiled again. NVRTC and CuPy are stand-ins here (no
GPU): they count compiles and record what was loaded."""
from __future__ import annotations

import sys
import types

from cnnrt.backends import cuda_graph


def _fakes(monkeypatch, log):
    nvrtc = types.SimpleNamespace(
        getVersion=lambda: (12, 9),
        createProgram=lambda src, name, a, b: {"src": src},
        compileProgram=lambda prog, opts: log.append(("compile", tuple(opts))),
        getCUBIN=lambda prog: b"CUBIN:" + prog["src"].encode(),
        destroyProgram=lambda prog: None,
        getProgramLog=lambda prog: "")
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.nvrtc = nvrtc
    for name, mod in (("cupy_backends", types.ModuleType("cupy_backends")),
                      ("cupy_backends.cuda", types.ModuleType("cupy_backends.cuda")),
                      ("cupy_backends.cuda.libs", libs), ("cupy_backends.cuda.libs.nvrtc", nvrtc)):
        monkeypatch.setitem(sys.modules, name, mod)

    class Module:
        def load(self, data):
            log.append(("load", bytes(data)))

        def get_function(self, name):
            return name

    return types.SimpleNamespace(cuda=types.SimpleNamespace(function=types.SimpleNamespace(Module=Module)))


def test_sm90a_cubins_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNRT_CACHE_DIR", str(tmp_path))
    log = []
    cp = _fakes(monkeypatch, log)
    src = 'extern "C" __global__ void k() {}'
    fns, _ = cuda_graph.load_sm90a(cp, src, ["k"])
    assert fns == {"k": "k"} and [e[0] for e in log] == ["compile", "load"]
    assert "--gpu-architecture=sm_90a" in log[0][1]
    path = cuda_graph.sm90a_cache_path(src, (12, 9))
    assert path.read_bytes() == b"CUBIN:" + src.encode() and path.parent.parent == tmp_path
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".partial")]
    log.clear()
    cuda_graph.load_sm90a(cp, src, ["k"])  # from the cache: no compile
    assert log == [("load", b"CUBIN:" + src.encode())]
    log.clear()
    cuda_graph.load_sm90a(cp, src + " ", ["k"])  # another source: another entry
    assert [e[0] for e in log] == ["compile", "load"]
    assert cuda_graph.sm90a_cache_path(src, (12, 9)) != cuda_graph.sm90a_cache_path(src, (13, 0))
    path.write_bytes(b"")  # a damaged entry is compiled again and rewritten
    log.clear()
    cuda_graph.load_sm90a(cp, src, ["k"])
    assert [e[0] for e in log] == ["compile", "load"] and path.read_bytes() == b"CUBIN:" + src.encode()
