"""Helpers for the serve tests: a real uvicorn server in a thread on 127.0.0.1 and a free port."""
from __future__ import annotations

import threading
import time
import urllib.request
from contextlib import contextmanager


@contextmanager
def running_server(app):
    """Serve `app` with uvicorn in a thread; yields its base URL; stops it (gracefully) on exit."""
    import uvicorn

    from cnnrt.serve.cli import _listen

    sock = _listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not become ready")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
