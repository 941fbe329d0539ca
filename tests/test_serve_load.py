"""A small, bounded load test against a real server on 127.0.0.1 (the full one is bench/serve_load.py):
many concurrent single-image requests, zero errors, every answer equal to the offline prediction."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from conftest import SHIPPED  # noqa: E402
from serve_support import running_server  # noqa: E402


@pytest.mark.parametrize("max_batch", [32, 1], ids=["batching on", "batching off"])
def test_load_500_requests_at_16_all_right(mnist_test, rng, max_batch):
    import cnnrt
    from cnnrt.serve.app import create_app
    from cnnrt.serve.load import run_load

    x, _ = mnist_test
    images = x[rng.choice(len(x), size=250, replace=False)]
    session = cnnrt.load(SHIPPED / "deep_mnist.safetensors", backend="numpy")
    expected = session.probabilities(images)  # offline, one call
    with running_server(create_app({"deep_mnist": session}, max_batch=max_batch, max_delay_ms=2)) as url:
        r = run_load(url, "deep_mnist", images, expected, requests=500, concurrency=16, time_limit_s=120)
    assert r["first_errors"] == []
    assert r["sent"] == 500 and r["not_sent"] == 0 and not r["timed_out"]
    assert r["errors"] == 0 and r["wrong"] == 0 and r["ties"] == 0 and r["ok"] == 500
    if max_batch == 1:
        assert r["batch_size_seen"]["max"] == 1
    else:
        assert 1 <= r["batch_size_seen"]["max"] <= 32


def test_load_refuses_other_hosts():
    from cnnrt.serve.load import run_load

    with pytest.raises(ValueError, match="only sends to this machine"):
        run_load("http://192.0.2.1:8000", "m", np.zeros((1, 28, 28), np.uint8), np.zeros((1, 10)), requests=1)


def test_the_listening_socket_says_it_is_tcp():
    # asyncio sets TCP_NODELAY only on accepted sockets whose protocol is IPPROTO_TCP; with 0, every
    # response waited ~40 ms for a delayed ACK (22 requests/s on one keep-alive connection)
    import socket

    from cnnrt.serve.cli import _listen

    with _listen("127.0.0.1", 0) as s:
        assert s.proto == socket.IPPROTO_TCP and s.type == socket.SOCK_STREAM
