"""Run in a fresh interpreter by `cnnrt bench`: time one peer's import, then its first answer.

Usage: python -m cnnrt.bench.cold PEER IMPORT_STATEMENT ARTIFACT H,W,C
Prints one JSON line: import_seconds (the import statement alone), first_call_seconds (import,
load the model file, build, and predict one image: what a fresh program waits for its first answer)
and peak_rss_bytes (the process's peak resident memory by then).
Only `cnnrt` and `cnnrt.bench` (both import nothing) are loaded before the timed import.
"""
import sys
import time


def main() -> None:
    name, statement, artifact, shape = sys.argv[1:5]
    t0 = time.perf_counter()
    exec(statement, {})
    t1 = time.perf_counter()
    import numpy as np

    from ..peers import get

    infer = get(name).load(artifact)
    x = np.zeros((1, *(int(v) for v in shape.split(","))), dtype=np.float32)
    out = np.asarray(infer(x, 1))
    t2 = time.perf_counter()
    import json

    rss = None
    try:  # this process's own high-water mark (getrusage's ru_maxrss carries the parent's over exec)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    print(json.dumps({"import_seconds": t1 - t0, "first_call_seconds": t2 - t0, "peak_rss_bytes": rss,
                      "output_shape": list(out.shape)}))


if __name__ == "__main__":
    main()
