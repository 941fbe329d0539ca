"""`cnnrt serve`: load the models, bind the socket, say what runs, and hand over to uvicorn."""
from __future__ import annotations

import signal
import socket
import sys

from ..errors import CnnrtError


def add_parser(sub) -> None:
    from ..cli import DEFAULT_MODEL, _default
    from .settings import DEFAULT_MAX_BATCH, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_DELAY_MS

    s = sub.add_parser(
        "serve", help="serve models over HTTP: the KServe v2 inference API, a draw-a-digit page, /metrics",
        description="Serves models with the Open Inference Protocol (KServe v2) REST API at /v2, a page at / "
                    "where you draw a digit and see the prediction, and Prometheus metrics at /metrics. "
                    "Requests that arrive together run as one batch (dynamic batching). Needs the serve "
                    "extra: pip install 'cnnrt[serve]'.")
    s.add_argument("--model", action="append", default=None, metavar="[NAME=]PATH",
                   help="a .safetensors bundle, an article-format directory, or a folder whose every .safetensors "
                        "is served; repeatable. Served under NAME, else the file's stem "
                        "(default: the shipped Deep MNIST)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    s.add_argument("--backend", default="auto", help="auto (default: the GPU if usable, else numpy), numpy or cuda")
    s.add_argument("--precision", choices=("fp32", "fp16"), default=None,
                   help="fp32 or fp16 (default: fp32 on the CPU, fp16 on the GPU)")
    s.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help="most images that requests arriving together share in one backend call; 1 turns "
                        "batching off (default: %(default)s)")
    s.add_argument("--max-delay-ms", type=float, default=DEFAULT_MAX_DELAY_MS,
                   help="longest a request waits for others to join its batch (default: %(default)s)")
    s.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="larger request bodies are refused with 413 (default: %(default)s)")
    s.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM or Ctrl-C, seconds to finish the requests in flight (default: %(default)s)")
    s.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs throughput)")
    s.set_defaults(func=cmd_serve, model_default=_default(DEFAULT_MODEL))


def _need_extra() -> None:
    missing = []
    for module, package in (("starlette", "starlette"), ("uvicorn", "uvicorn"), ("PIL", "pillow"),
                            ("prometheus_client", "prometheus_client")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise CnnrtError(f"cnnrt serve needs {', '.join(missing)}: pip install 'cnnrt[serve]'")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP (else
    # every response waits ~40 ms for a delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CnnrtError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def cmd_serve(a) -> int:
    for flag, value, low in (("--max-batch", a.max_batch, 1), ("--max-body-bytes", a.max_body_bytes, 1),
                             ("--port", a.port, 0)):
        if value < low:
            raise CnnrtError(f"{flag} must be at least {low}, got {value}")
    if a.port > 65535:
        raise CnnrtError(f"--port must be at most 65535, got {a.port}")
    if not a.max_delay_ms >= 0:
        raise CnnrtError(f"--max-delay-ms must be at least 0, got {a.max_delay_ms}")
    if not a.shutdown_timeout > 0:
        raise CnnrtError(f"--shutdown-timeout must be more than 0, got {a.shutdown_timeout}")
    _need_extra()
    import uvicorn

    from .app import create_app
    from .registry import load_sessions, model_paths

    paths = model_paths(a.model or [a.model_default])
    sessions = load_sessions(paths, backend=a.backend, precision=a.precision)
    try:
        app = create_app(sessions, max_batch=a.max_batch, max_delay_ms=a.max_delay_ms, max_body_bytes=a.max_body_bytes)
        sock = _listen(a.host, a.port)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        for name, s in sessions.items():
            if s.backend_note:
                print(f"cnnrt serve: {s.backend_note}", file=sys.stderr)
            print(f"cnnrt serve: model '{name}' from {paths[name]} on {s.backend} {s.precision}, "
                  f"input {list(s.input_shape)}, {s.num_classes} classes", file=sys.stderr)
        if a.max_batch == 1:
            print("cnnrt serve: dynamic batching off (--max-batch 1): one request per backend call", file=sys.stderr)
        else:
            print(f"cnnrt serve: dynamic batching: up to {a.max_batch} images per backend call, a request waits "
                  f"at most {a.max_delay_ms:g} ms for others", file=sys.stderr)
        if a.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"cnnrt serve: listening on {a.host}: reachable from other machines", file=sys.stderr)
        print(f"cnnrt serve: listening on http://{shown}:{port}/ (page at /, API at /v2, metrics at /metrics)",
              file=sys.stderr, flush=True)
        terminated = []
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it: finish as a clean stop, not a kill
        previous = signal.signal(signal.SIGTERM, lambda sig, frame: terminated.append(sig))
        config = uvicorn.Config(app, log_level="info", access_log=a.access_log, lifespan="on",
                                timeout_graceful_shutdown=a.shutdown_timeout)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            signal.signal(signal.SIGTERM, previous)
            sock.close()
        print("cnnrt serve: stopped" + (" on SIGTERM" if terminated else ""), file=sys.stderr)
    finally:
        for s in sessions.values():
            s.close()
    return 0
