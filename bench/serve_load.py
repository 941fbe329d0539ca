"""Load test of `cnnrt serve`: throughput and latency with dynamic batching on and off.

    PYTHONPATH=. python bench/serve_load.py --json-out docs/serve_load_cpu.json
    PYTHONPATH=. python3 bench/serve_load.py --backend cuda --json-out docs/serve_load_gpu.json   # on the device

For each configuration it starts `cnnrt serve` in its own process on 127.0.0.1 (a free port),
sends a checked warm-up, then `--requests` single-image KServe v2 requests (MNIST test images, in
turn) at `--concurrency` from an asyncio client in this process, and checks every answer against
the same model run offline here (Session.probabilities over all the images in one call): the same
label, probabilities equal within --atol. Bounded: only 127.0.0.1, at most --time-limit seconds
per configuration. Client and server share this machine's cores. Prints a Markdown table and
writes JSON (throughput, p50/p90/p99 latency, the server's own batch sizes from /metrics).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUNDLE = ROOT / "models" / "deep_mnist" / "deep_mnist.safetensors"
IMAGES = ROOT / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
LABELS = ROOT / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz"


def _gpu_name() -> str:
    from cnnrt.backends.cuda import device_name

    return device_name()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class ServerProcess:
    def __init__(self, args: list[str]):
        cmd = [sys.executable, "-m", "cnnrt", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                         [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))},
                                     cwd=ROOT)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()
        deadline = time.monotonic() + 120
        self.url = None
        while self.url is None:
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", "".join(self.lines))
            if m:
                self.url = m.group(1)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("cnnrt serve did not start:\n" + "".join(self.lines))
            else:
                time.sleep(0.05)
        while True:
            try:
                with urllib.request.urlopen(self.url + "/v2/health/ready", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit("cnnrt serve never became ready:\n" + "".join(self.lines))
            time.sleep(0.05)

    def metrics(self) -> dict:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if "le" not in s.labels:  # totals over models and labels; buckets are not needed
                    out[s.name] = out.get(s.name, 0) + s.value
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(BUNDLE))
    p.add_argument("--backend", default="numpy", help="numpy (default) or cuda; the server and the offline reference both use it")
    p.add_argument("--precision", default=None, choices=("fp32", "fp16"))
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=64, help="the server's --max-batch with batching on")
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--configs", default="on,off", help="comma-separated: on (batching), off (--max-batch 1)")
    p.add_argument("--warmup", type=int, default=256, help="checked requests before the timed ones")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds at most per configuration")
    p.add_argument("--atol", type=float, default=None, help="probability tolerance (default: 1e-5 fp32, 2e-3 fp16)")
    p.add_argument("--json-out", default=None)
    a = p.parse_args(argv)

    import cnnrt
    from cnnrt.idx import load_mnist
    from cnnrt.serve.load import run_load

    x, _ = load_mnist(IMAGES, LABELS)
    session = cnnrt.load(a.model, backend=a.backend, precision=a.precision)
    expected = session.probabilities(x)
    atol = a.atol if a.atol is not None else (1e-5 if session.precision == "fp32" else 2e-3)
    print(f"offline reference: {session.backend} {session.precision}, {len(x)} images", file=sys.stderr)

    runs = []
    for config in [c.strip() for c in a.configs.split(",") if c.strip()]:
        if config not in ("on", "off"):
            raise SystemExit(f"--configs: unknown configuration {config!r} (on, off)")
        max_batch = a.max_batch if config == "on" else 1
        args = ["--model", f"model={a.model}", "--backend", session.backend, "--precision", session.precision,
                "--max-batch", str(max_batch), "--max-delay-ms", str(a.max_delay_ms)]
        load_before = os.getloadavg()
        server = ServerProcess(args)
        try:
            warm = run_load(server.url, "model", x, expected, requests=a.warmup, concurrency=a.concurrency,
                            time_limit_s=a.time_limit, atol=atol)
            before = server.metrics()
            r = run_load(server.url, "model", x, expected, requests=a.requests, concurrency=a.concurrency,
                         time_limit_s=a.time_limit, atol=atol)
            after = server.metrics()
        finally:
            code = server.stop()
        calls = after.get("cnnrt_batch_size_count", 0) - before.get("cnnrt_batch_size_count", 0)
        images = after.get("cnnrt_batch_size_sum", 0) - before.get("cnnrt_batch_size_sum", 0)
        r.update({"config": f"batching {config}", "max_batch": max_batch, "max_delay_ms": a.max_delay_ms,
                  "server_command": " ".join(["cnnrt", "serve", *args]),
                  "warmup_errors": warm["errors"] + warm["wrong"],
                  # other work on the machine skews the numbers: the 1-minute load average, before and after
                  "load_average_1min": [load_before[0], os.getloadavg()[0]],
                  "server": {"backend_calls": int(calls), "images": int(images),
                             "mean_batch_size": images / calls if calls else None,
                             "exit_status": code}})
        runs.append(r)
        print(f"batching {config}: {r['ok']}/{a.requests} right, {r['errors']} errors, {r['wrong']} wrong, "
              f"{r['requests_per_second']:.0f} requests/s, p50 {r['latency_ms']['p50']:.2f} ms, "
              f"p99 {r['latency_ms']['p99']:.2f} ms, mean batch {r['server']['mean_batch_size']:.2f}", file=sys.stderr)

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/serve_load.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "model": str(a.model), "backend": session.backend, "precision": session.precision,
        "gpu": _gpu_name() if session.backend == "cuda" else None,
        "requests": a.requests, "concurrency": a.concurrency, "atol": atol, "runs": runs,
    }
    print("| configuration | requests/s | p50 ms | p99 ms | mean batch (server) | errors | wrong |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['config']} (--max-batch {r['max_batch']}) | {r['requests_per_second']:,.0f} | "
              f"{r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | {r['server']['mean_batch_size']:.2f} | "
              f"{r['errors']} | {r['wrong']} |")
    if a.json_out:
        out = Path(a.json_out)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        os.replace(tmp, out)
    bad = any(r["errors"] or r["wrong"] or r["not_sent"] or r["warmup_errors"] for r in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
