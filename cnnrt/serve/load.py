"""A bounded load test of a running `cnnrt serve`: many single-image requests, every answer checked.

Sends `requests` single-image KServe v2 infer requests at `concurrency`, only to this machine
(127.0.0.1, ::1 or localhost), stops at `time_limit_s` whatever happens, and checks every answer
against the offline probabilities the caller computed with `Session.probabilities`: a label must
be the same, probabilities equal within `atol`. Used by bench/serve_load.py and by the tests.
"""
from __future__ import annotations

import asyncio
import json
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


async def _run(url: str, model: str, images: np.ndarray, expected: np.ndarray, requests: int,
               concurrency: int, time_limit_s: float, atol: float) -> dict:
    import httpx

    bodies = [infer_body(im) for im in images[:min(len(images), requests)]]
    want_labels = expected.argmax(axis=1)
    endpoint = f"{url.rstrip('/')}/v2/models/{model}/infer"
    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors: list[str] = []
    counts = {"sent": 0, "ok": 0, "errors": 0, "wrong": 0, "ties": 0}
    next_index = 0
    deadline = time.perf_counter() + time_limit_s

    async def worker(client) -> None:
        nonlocal next_index
        while next_index < requests and time.perf_counter() < deadline:
            k = next_index
            next_index += 1
            i = k % len(bodies)
            counts["sent"] += 1
            t0 = time.perf_counter()
            try:
                r = await client.post(endpoint, content=bodies[i], headers={"Content-Type": "application/json"})
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                j = r.json()
                out = {o["name"]: o for o in j["outputs"]}
                probs = np.asarray(out["probabilities"]["data"], dtype=np.float32)
                label = int(out["label"]["data"][0])
            except Exception as e:  # any failure is counted and reported, never hidden
                counts["errors"] += 1
                if len(errors) < 10:
                    errors.append(f"request {k} (image {i}): {type(e).__name__}: {e}")
                continue
            latencies.append(dt)
            batch_sizes.append(int(j.get("parameters", {}).get("batch_size", 0)))
            close = probs.shape == expected[i].shape and np.allclose(probs, expected[i], rtol=0, atol=atol)
            if label == want_labels[i] and close:
                counts["ok"] += 1
            elif close:
                counts["ties"] += 1  # equal probabilities within atol, and the top two within atol: a tie
            else:
                counts["wrong"] += 1
                if len(errors) < 10:
                    errors.append(f"request {k} (image {i}): label {label}, expected {want_labels[i]}; "
                                  f"largest probability difference {np.abs(probs - expected[i]).max():.3g}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
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
    return asyncio.run(_run(url, model, images, expected, requests, concurrency, time_limit_s, atol))
