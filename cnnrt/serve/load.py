"""A bounded load test of a running `cnnrt serve`: many single-image requests, every answer checked.

Sends `requests` single-image KServe v2 infer requests from `concurrency` client threads (each
with its own keep-alive connection), only to this machine
(127.0.0.1, ::1 or localhost), stops at `time_limit_s` whatever happens, and checks every answer
against the offline probabilities the caller computed with `Session.probabilities`: a label must
be the same, probabilities equal within `atol`. Used by bench/serve_load.py and by the tests.
"""
from __future__ import annotations

import json
import threading
import time
from urllib.parse import urlsplit

import numpy as np

LOCAL = ("127.0.0.1", "::1", "localhost")


def infer_body(image: np.ndarray) -> bytes:
    """One image (H, W[, C]) uint8 as a KServe v2 infer request."""
    x = np.asarray(image, dtype=np.uint8)
    return json.dumps({"inputs": [{"name": "images", "shape": [1, *x.shape], "datatype": "UINT8",
                                   "data": x.ravel().tolist()}]}).encode()


def _percentile_ms(seconds: list[float], q: float) -> float | None:
    return float(np.percentile(seconds, q) * 1000) if seconds else None


def _run(url: str, model: str, images: np.ndarray, expected: np.ndarray, requests: int,
         concurrency: int, time_limit_s: float, atol: float) -> dict:
    # one thread and one keep-alive connection per concurrent client: the standard library's
    # http.client costs the client far less CPU than an asyncio client pool (which shares the cores)
    import http.client

    parts = urlsplit(url)
    bodies = [infer_body(im) for im in images[:min(len(images), requests)]]
    want_labels = expected.argmax(axis=1)
    path = f"{parts.path.rstrip('/')}/v2/models/{model}/infer"
    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors: list[str] = []
    counts = {"sent": 0, "ok": 0, "errors": 0, "wrong": 0, "ties": 0}
    lock = threading.Lock()
    deadline = time.perf_counter() + time_limit_s

    def note(kind: str, message: str | None = None) -> None:
        with lock:
            counts[kind] += 1
            if message is not None and len(errors) < 10:
                errors.append(message)

    def worker() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            while time.perf_counter() < deadline:
                with lock:
                    if counts["sent"] >= requests:
                        return
                    k = counts["sent"]
                    counts["sent"] += 1
                i = k % len(bodies)
                t0 = time.perf_counter()
                try:
                    conn.request("POST", path, body=bodies[i], headers={"Content-Type": "application/json"})
                    r = conn.getresponse()
                    raw = r.read()
                    dt = time.perf_counter() - t0
                    if r.status != 200:
                        raise RuntimeError(f"HTTP {r.status}: {raw[:200]!r}")
                    j = json.loads(raw)
                    out = {o["name"]: o for o in j["outputs"]}
                    probs = np.asarray(out["probabilities"]["data"], dtype=np.float32)
                    label = int(out["label"]["data"][0])
                except Exception as e:  # any failure is counted and reported, never hidden
                    conn.close()  # a fresh connection for the next request
                    note("errors", f"request {k} (image {i}): {type(e).__name__}: {e}")
                    continue
                close = probs.shape == expected[i].shape and np.allclose(probs, expected[i], rtol=0, atol=atol)
                with lock:
                    latencies.append(dt)
                    batch_sizes.append(int(j.get("parameters", {}).get("batch_size", 0)))
                if label == want_labels[i] and close:
                    note("ok")
                elif close:
                    note("ties")  # probabilities equal within atol, so the top two are too: a tie
                else:
                    note("wrong", f"request {k} (image {i}): label {label}, expected {want_labels[i]}; largest "
                                  f"probability difference {np.abs(probs - expected[i]).max():.3g}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    done = counts["ok"] + counts["ties"] + counts["wrong"]
    return {
        "requests": requests, "concurrency": concurrency, **counts,
        "not_sent": requests - counts["sent"], "timed_out": counts["sent"] < requests,
        "seconds": seconds, "requests_per_second": done / seconds if seconds else None,
        "latency_ms": {"p50": _percentile_ms(latencies, 50), "p90": _percentile_ms(latencies, 90),
                       "p99": _percentile_ms(latencies, 99), "max": max(latencies) * 1000 if latencies else None},
        "batch_size_seen": {"mean": float(np.mean(batch_sizes)) if batch_sizes else None,
                            "max": max(batch_sizes) if batch_sizes else None},
        "atol": atol, "first_errors": errors,
    }


def run_load(url: str, model: str, images: np.ndarray, expected: np.ndarray, requests: int = 20000,
             concurrency: int = 64, time_limit_s: float = 600.0, atol: float = 1e-5) -> dict:
    """Run the load test; `expected` is (len(images), classes) offline probabilities. Returns the counts
    (ok, errors, wrong, ties, not_sent), throughput and latency percentiles."""
    host = urlsplit(url).hostname
    if host not in LOCAL:
        raise ValueError(f"the load test only sends to this machine ({', '.join(LOCAL)}), not {host!r}")
    if requests < 1 or concurrency < 1 or not time_limit_s > 0:
        raise ValueError("requests and concurrency must be at least 1 and time_limit_s more than 0")
    if len(images) != len(expected):
        raise ValueError(f"{len(images)} images but {len(expected)} expected answers")
    return _run(url, model, images, expected, requests, concurrency, time_limit_s, atol)
