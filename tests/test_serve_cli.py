"""`cnnrt serve` end to end, in a fresh process as a user runs it: several models, answers checked
against the models run offline, a graceful stop on SIGTERM with a request in flight, and every
bad flag an exit status 2 with a clear message."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from conftest import ROOT, SHIPPED  # noqa: E402

BUNDLE = SHIPPED / "deep_mnist.safetensors"
ARTICLE = SHIPPED / "article"


def serve_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "cnnrt", "serve", *args]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


class Server:
    """`cnnrt serve` in a subprocess; reads its stderr in a thread and finds the port it printed."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(serve_cmd("--port", "0", *args), stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True, env=env(), cwd=ROOT)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 60
        self.url = None
        while self.url is None:
            for line in list(self.lines):
                m = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", line)
                if m:
                    self.url = m.group(1)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("cnnrt serve did not start:\n" + "".join(self.lines))
            time.sleep(0.05)
        while True:  # the socket is bound before uvicorn starts: wait for the app
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("cnnrt serve never became ready:\n" + "".join(self.lines))
            time.sleep(0.05)

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return r.status, r.read()

    def post(self, path, body: bytes):
        req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)
        return "".join(self.lines)


def infer_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "UINT8",
                                   "data": x.ravel().tolist()}]}).encode()


def test_serve_several_models_and_stop_gracefully_on_sigterm(mnist_test, rng):
    import cnnrt

    x, y = mnist_test
    offline = cnnrt.load(BUNDLE, backend="numpy")
    server = Server("--backend", "numpy", "--model", f"deep={BUNDLE}", "--model", str(ARTICLE),
                    "--max-body-bytes", "40000000")
    try:
        text = "".join(server.lines)
        assert "model 'deep' from" in text and "model 'article' from" in text and "on numpy fp32" in text
        assert "dynamic batching: up to 64 images per backend call" in text
        status, body = server.get("/v2")
        assert json.loads(body)["models"] == ["article", "deep"]
        idx = rng.choice(len(x), size=20, replace=False)
        for name in ("deep", "article"):  # the same net in both formats: the same answers
            status, r = server.post(f"/v2/models/{name}/infer", infer_body(x[idx]))
            assert status == 200 and r["model_name"] == name
            probs = np.asarray(r["outputs"][0]["data"]).reshape(20, 10)
            np.testing.assert_allclose(probs, offline.probabilities(x[idx]), rtol=0, atol=1e-5)
        status, r = server.post("/v2/models/deep/infer", b"not json")
        assert status == 400 and "not JSON" in r["error"]

        # a large request in flight when SIGTERM comes must still be answered, and right
        big = x[:2000]
        answer = {}
        t = threading.Thread(target=lambda: answer.update(zip(("status", "body"), server.post("/v2/models/deep/infer", infer_body(big)))))
        t.start()
        deadline = time.monotonic() + 60
        while b'cnnrt_pending_requests{model="deep"} 1.0' not in server.get("/metrics")[1]:
            assert time.monotonic() < deadline and t.is_alive(), "the big request never reached the batcher"
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        t.join(120)
        assert answer.get("status") == 200, answer
        labels = answer["body"]["outputs"][1]["data"]
        assert labels == offline.predict(big).tolist()
        assert (np.asarray(labels) == y[:2000]).mean() > 0.98
        assert server.proc.wait(60) == 0
        text = server.stop()
        assert "cnnrt serve: stopped on SIGTERM" in text and "Traceback" not in text
    finally:
        server.stop()


def test_serve_a_folder_of_models(tmp_path, mnist_test):
    shutil.copy(BUNDLE, tmp_path / "alpha.safetensors")
    shutil.copy(BUNDLE, tmp_path / "beta.safetensors")
    server = Server("--backend", "numpy", "--model", str(tmp_path), "--max-batch", "1")
    try:
        assert "dynamic batching off (--max-batch 1)" in "".join(server.lines)
        assert json.loads(server.get("/v2")[1])["models"] == ["alpha", "beta"]
        x, y = mnist_test
        status, r = server.post("/v2/models/beta/infer", infer_body(x[:5]))
        assert status == 200 and r["outputs"][1]["data"] == y[:5].tolist()  # the first five are easy ones
    finally:
        server.stop()


def run_fail(*args) -> subprocess.CompletedProcess:
    p = subprocess.run(serve_cmd(*args), capture_output=True, text=True, env=env(), cwd=ROOT, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    return p


def test_missing_model_file(tmp_path):
    p = run_fail("--model", str(tmp_path / "nope.safetensors"))
    assert f"--model {tmp_path / 'nope.safetensors'}: {tmp_path / 'nope.safetensors'} does not exist" in p.stderr


def test_two_models_under_one_name():
    p = run_fail("--backend", "numpy", "--model", f"a={BUNDLE}", "--model", f"a={ARTICLE}")
    assert "two models would be served as 'a'" in p.stderr and "--model NAME=" in p.stderr


def test_a_name_that_cannot_go_in_a_url(tmp_path):
    shutil.copy(BUNDLE, tmp_path / "my model.safetensors")
    p = run_fail("--model", str(tmp_path / "my model.safetensors"))
    assert "'my model' cannot be a model name" in p.stderr


def test_a_broken_model_file(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 100)
    p = run_fail("--backend", "numpy", "--model", str(bad))
    assert "broken.safetensors" in p.stderr


@pytest.mark.parametrize("flag,value,message", [
    ("--max-batch", "0", "--max-batch must be at least 1, got 0"),
    ("--max-delay-ms", "-1", "--max-delay-ms must be at least 0"),
    ("--max-body-bytes", "0", "--max-body-bytes must be at least 1"),
    ("--port", "70000", "--port must be at most 65535"),
])
def test_bad_numbers(flag, value, message):
    assert message in run_fail(flag, value).stderr


def test_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run_fail("--backend", "numpy", "--port", str(port))
    assert f"cannot listen on 127.0.0.1:{port}" in p.stderr


def test_serve_help_lists_the_flags():
    p = subprocess.run(serve_cmd("--help"), capture_output=True, text=True, env=env(), cwd=ROOT, timeout=60)
    assert p.returncode == 0
    for flag in ("--model", "--host", "--port", "--backend", "--max-batch", "--max-delay-ms", "--max-body-bytes"):
        assert flag in p.stdout
