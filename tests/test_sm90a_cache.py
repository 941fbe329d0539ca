"""cuda_graph.load_cubin caches its cubins on disk (sm_90a ones and the device's own): a second load
of the same source does not call NVRTC; an empty or unloadable (damaged) cache entry is compiled again. NVRTC and CuPy are stand-ins here (no
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
            if not bytes(data).startswith(b"CUBIN:"):
                raise RuntimeError("CUDA_ERROR_INVALID_IMAGE")
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


def test_the_devices_own_cubins_are_cached_apart(tmp_path, monkeypatch):
    # the modules CuPy used to compile: the device's sm_XX with CuPy's -ftz=true, in cubin/
    monkeypatch.setenv("CNNRT_CACHE_DIR", str(tmp_path))
    log = []
    cp = _fakes(monkeypatch, log)
    src = 'extern "C" __global__ void k() {}'
    cuda_graph.load_cubin(cp, src, ["k"], "sm_80")
    assert [e[0] for e in log] == ["compile", "load"]
    assert "--gpu-architecture=sm_80" in log[0][1] and "-ftz=true" in log[0][1]
    path = cuda_graph.cubin_cache_path(src, (12, 9), "sm_80")
    assert path.parent.name == "cubin" and path != cuda_graph.sm90a_cache_path(src, (12, 9))
    assert path != cuda_graph.cubin_cache_path(src, (12, 9), "sm_90")
    log.clear()
    cuda_graph.load_cubin(cp, src, ["k"], "sm_80")
    assert log == [("load", b"CUBIN:" + src.encode())]
    path.write_bytes(b"garbage")  # present but not loadable: compiled again and rewritten
    log.clear()
    cuda_graph.load_cubin(cp, src, ["k"], "sm_80")
    assert [e[0] for e in log] == ["compile", "load"] and path.read_bytes() == b"CUBIN:" + src.encode()


def test_the_runner_loads_every_module_itself(monkeypatch):
    # on the CuPy stand-in: every module goes through load_cubin, none falls back to CuPy's RawModule
    from cnnrt.testing import fake_cupy
    from cnnrt.testing import graphs as TG

    fake_cupy.install(monkeypatch)
    r = cuda_graph.GraphRunner(TG.resnet20(0), "fp16")
    assert r.functions and r.cupy_modules == 0 and r.prepare_breakdown["cupy_modules"] == 0
